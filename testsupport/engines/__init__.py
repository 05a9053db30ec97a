"""Local CPU builds of Ollama and llama.cpp that the tests start (vLLM, which the demo also
runs, lives in servescope.engines)."""
