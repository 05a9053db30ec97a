/*
 * No-device stand-in for libollama-ggml-sycl.so of Intel's ipex-llm Ollama build
 * (PyPI bigdl-core-cpp 2.6.0, Ollama 0.5.4-ipexllm-20250407).
 *
 * The real library needs an Intel GPU and aborts at start without one ("can not find
 * preferred GPU platform"). The Ollama binary and its libraries import exactly these four
 * symbols from it (found with `nm -D --undefined-only` on ollama-lib and lib*.so, matched
 * against `nm -D --defined-only libollama-ggml-sycl.so`):
 *
 *   libollama_ggml.so          ggml_backend_sycl_reg
 *   libollama_llama.so         ggml_backend_sycl_get_device_name
 *   libollama_llama.so         ggml_format_convert_to_xpu (C++ name, see below)
 *   libollama_llava_shared.so  ggml_backend_sycl_init
 *
 * Registering no backend is safe: ggml_backend_registry::register_backend returns at once
 * for a NULL registration (checked in the disassembly of libollama_ggml.so), so only the
 * CPU backend is registered and every model runs on the CPU.
 *
 * Build: gcc -shared -fPIC -O2 -o libollama-ggml-sycl.so sycl_stub.c
 */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>

void *ggml_backend_sycl_reg(void) { return NULL; }

void *ggml_backend_sycl_init(int device) {
    (void)device;
    return NULL;
}

const char *ggml_backend_sycl_get_device_name(int device) {
    (void)device;
    return "none (servescope SYCL stub)";
}

/* C++: void ggml_format_convert_to_xpu(const void *, void *, unsigned long, int).
 * Only used to re-lay quantized weights for an XPU buffer; with no SYCL device it is
 * never reached. Stop loudly rather than leave weights silently unconverted. */
void ggml_format_convert_to_xpu(const void *src, void *dst, size_t n, int type)
    __asm__("_Z26ggml_format_convert_to_xpuPKvPvmi");
void ggml_format_convert_to_xpu(const void *src, void *dst, size_t n, int type) {
    (void)src;
    (void)dst;
    (void)n;
    (void)type;
    fprintf(stderr, "servescope SYCL stub: ggml_format_convert_to_xpu called, "
                    "but there is no SYCL device\n");
    abort();
}
