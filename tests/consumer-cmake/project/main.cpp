// Uses an installed apir through CMake: a typed FORWARD call to the installed demo
// backend (the path comes on the command line), then each module's handshake,
// loaded with dlopen. Exits non-zero on any failure.
#include <apir/apir.hpp>

#include <fmt/core.h>

#include <array>
#include <cstdint>

#include <dlfcn.h>

// The demo backend's Add (command 1): two int64 in, their sum out. On the wire a
// std::array of two int64 is the same 16 bytes as the demo's AddRequest struct.
using Add = apir::Forward<1, std::array<int64_t, 2>, int64_t>;

int main(int argc, char** argv) {
    if (argc < 2) {
        fmt::print(stderr, "usage: apir-consumer-cmake BACKEND.so [MODULE.so...]\n");
        return 2;
    }
    apir::LoopbackOptions lo;
    lo.host.config[std::string(apir::config_library_path)] = argv[1];
    apir::Session session(apir::LoopbackTransport(std::move(lo)));
    if (auto c = session.connect(); !c) {
        fmt::print(stderr, "apir-consumer-cmake: connect: {}\n", c.error());
        return 1;
    }
    auto r = session.call<Add>({40, 2});
    if (!r || *r != 42) {
        fmt::print(stderr, "apir-consumer-cmake: add failed\n");
        return 1;
    }
    for (int i = 2; i < argc; ++i) {
        void* m = ::dlopen(argv[i], RTLD_NOW | RTLD_LOCAL);
        auto* fn =
            m ? reinterpret_cast<int (*)()>(::dlsym(m, "consumer_module_handshake")) : nullptr;
        if (!fn || fn() != 0) {
            fmt::print(stderr, "apir-consumer-cmake: {}: {}\n", argv[i],
                       m ? "handshake failed" : ::dlerror());
            return 1;
        }
        ::dlclose(m);
    }
    fmt::print("apir-consumer-cmake: 40 + 2 = {} through the installed demo backend; {} "
               "module(s) handshook\n",
               *r, argc - 2);
    return 0;
}
