// ggml's RPC server over ggml's CPU device, for the tests of the host backend's RPC keys:
//
//     apir-test-rpc-server <ggml lib dir> <port>
//
// Serves 127.0.0.1:<port> until killed. ggml's libraries are opened by path from the
// peer's lib folder (the tests link no ggml).
#include <ggml-backend.h>

#include <dlfcn.h>

#include <cstdio>
#include <string>

int main(int argc, char** argv) {
    if (argc != 3) {
        std::fprintf(stderr, "usage: %s <ggml lib dir> <port>\n", argv[0]);
        return 2;
    }
    const std::string dir = argv[1];
    const std::string endpoint = std::string("127.0.0.1:") + argv[2];
    void* cpu = dlopen((dir + "/libggml-cpu.so.0").c_str(), RTLD_NOW | RTLD_GLOBAL);
    void* rpc = dlopen((dir + "/libggml-rpc.so.0").c_str(), RTLD_NOW | RTLD_GLOBAL);
    if (!cpu || !rpc) {
        std::fprintf(stderr, "rpc-server: %s\n", dlerror());
        return 1;
    }
    using reg_fn = ggml_backend_reg_t (*)();
    using dev_get_fn = ggml_backend_dev_t (*)(ggml_backend_reg_t, size_t);
    using start_fn = void (*)(const char*, const char*, size_t, size_t, ggml_backend_dev_t*);
    auto cpu_reg = reinterpret_cast<reg_fn>(dlsym(cpu, "ggml_backend_cpu_reg"));
    auto dev_get = reinterpret_cast<dev_get_fn>(dlsym(RTLD_DEFAULT, "ggml_backend_reg_dev_get"));
    auto start = reinterpret_cast<start_fn>(dlsym(rpc, "ggml_backend_rpc_start_server"));
    if (!cpu_reg || !dev_get || !start) {
        std::fprintf(stderr, "rpc-server: a ggml entry point is missing\n");
        return 1;
    }
    ggml_backend_dev_t dev = dev_get(cpu_reg(), 0);
    start(endpoint.c_str(), nullptr, 1, 1, &dev);
    return 0;
}
