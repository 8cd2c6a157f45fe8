// ggml over apir, end to end: connect to a ggml host backend, allocate a buffer, upload
// two vectors, compute their ADD remotely, download the sum and check it.
//
//   apir-ggml-add                       uses ggml's own host backend and CPU backend from
//                                       $APIR_GGML_PEER_DIR (a ggml build: lib/...)
//   apir-ggml-add BACKEND [LIB [REG]]   any APIR backend library answering ggml's commands
//                                       (LIB, REG: its ggml.library.path / .reg)
// Exits 77 when there is nothing to connect to.
#include <apir/ggml/client.hpp>
#include <apir/loopback.hpp>

#include <cstdlib>
#include <filesystem>
#include <vector>

namespace ag = apir::ggml;

int main(int argc, char** argv) {
    apir::LoopbackOptions lo;
    auto& config = lo.host.config;
    if (argc >= 2) {
        config["apir.load_library.path"] = argv[1];
        if (argc >= 3) config["ggml.library.path"] = argv[2];
        if (argc >= 4) config["ggml.library.reg"] = argv[3];
    } else if (const char* peer = std::getenv("APIR_GGML_PEER_DIR");
               peer && std::filesystem::exists(std::filesystem::path(peer) / "lib")) {
        const auto lib = std::filesystem::path(peer) / "lib";
        config["apir.load_library.path"] = (lib / "libggml-virtgpu-backend.so.0").string();
        config["ggml.library.path"] = (lib / "libggml-cpu.so.0").string();
        config["ggml.library.reg"] = "ggml_backend_cpu_reg";
    } else {
        fmt::print("usage: {} BACKEND [LIB [REG]], or set APIR_GGML_PEER_DIR to a ggml build\n",
                   argv[0]);
        return 77;
    }

    // 1. Connect: handshake and LOADLIBRARY (the host loads the backend library).
    apir::Session session(apir::LoopbackTransport(std::move(lo)));
    if (auto c = session.connect(); !c) {
        fmt::print(stderr, "connect: {}\n", c.error());
        return 1;
    }
    ag::Device dev(session);
    auto name = dev.name();
    if (!name) return fmt::print(stderr, "{}\n", name.error()), 1;
    fmt::print("device: {}\n", *name);

    // 2. A buffer of the device's default type, room for three vectors of n floats.
    constexpr uint32_t n = 1024;
    auto buft = dev.buffer_type();
    if (!buft) return fmt::print(stderr, "{}\n", buft.error()), 1;
    auto buf = dev.alloc_buffer(*buft, 3 * n * sizeof(float));
    if (!buf) return fmt::print(stderr, "{}\n", buf.error()), 1;

    // 3. Three tensors in it: a at 0, b after it, the sum after b.
    auto a = ag::make_tensor(ag::Type::f32, {n}).place(buf->handle, 0).set_name("a");
    auto b = ag::make_tensor(ag::Type::f32, {n}).place(buf->handle, n * 4).set_name("b");
    auto sum = ag::make_tensor(ag::Type::f32, {n}).place(buf->handle, 2 * n * 4).set_name("sum");

    std::vector<float> x(n), y(n), out(n);
    for (uint32_t i = 0; i < n; ++i) {
        x[i] = static_cast<float>(i);
        y[i] = 0.5f * static_cast<float>(i) + 1.0f;
    }
    if (auto r = dev.set_tensor(a, std::as_bytes(std::span(x))); !r)
        return fmt::print(stderr, "{}\n", r.error()), 1;
    if (auto r = dev.set_tensor(b, std::as_bytes(std::span(y))); !r)
        return fmt::print(stderr, "{}\n", r.error()), 1;

    // 4. The graph: one ADD node over the two inputs, computed on the host.
    ag::Graph g;
    uint64_t ia = g.add(a);
    uint64_t ib = g.add(b);
    g.add_node(sum, ag::Op::add, {ia, ib});
    if (auto r = dev.graph_compute(g); !r) return fmt::print(stderr, "{}\n", r.error()), 1;

    // 5. Download and check.
    if (auto r = dev.get_tensor(sum, std::as_writable_bytes(std::span(out))); !r)
        return fmt::print(stderr, "{}\n", r.error()), 1;
    for (uint32_t i = 0; i < n; ++i)
        if (out[i] != x[i] + y[i]) {
            fmt::print(stderr, "sum[{}] = {}, expected {}\n", i, out[i], x[i] + y[i]);
            return 1;
        }
    if (auto r = dev.free_buffer(buf->handle); !r) return fmt::print(stderr, "{}\n", r.error()), 1;

    fmt::print("ADD of {} floats computed remotely: correct\n", n);
    for (const auto& s : dev.stats())
        fmt::print("  {:<26} {} calls\n", s.name, s.stats.calls);
    return 0;
}
