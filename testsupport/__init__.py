"""What only the test suite and the benchmarks start: the zero-delay streaming server and
the local CPU builds of Ollama and llama.cpp. Not installed with servescope."""
