// ggml-backend-bench: the same ggml work on remote ggml backends, in one run:
//
//   apir       libggml-apir's device: the loopback transport to ggml's host backend
//              (libggml-virtgpu-backend over ggml's CPU backend), all in this process;
//   apir-host  the same against apir's own host backend (libggml-apir-host, when built),
//              whose zero-copy buffers turn set/get into copies in this process;
//   rpc        ggml's RPC backend, talking TCP on 127.0.0.1 to an RPC server (ggml's CPU
//              backend) that this program starts in a child process.
//
// So this compares an in-process link with TCP between two processes: it shows what
// each path costs on this machine, not a VM's virtio-gpu path (whose host is another
// process too). Every operation goes through ggml's own API (ggml_backend_tensor_get,
// ggml_backend_tensor_set, ggml_backend_graph_compute), so both sides do the same work.
//
//   ggml-backend-bench [--quick] [--json]      needs APIR_GGML_PEER_DIR (exit 77 without)
#include "registry.hpp"

#include "ggml-alloc.h"
#include "ggml-backend.h"
#include "ggml.h"

#include <fmt/format.h>

#include <arpa/inet.h>
#include <csignal>
#include <netinet/in.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <functional>
#include <string>
#include <thread>
#include <vector>

extern char** environ;

namespace {

using Clock = std::chrono::steady_clock;
constexpr int server_threads = 4; // what ggml's CPU backend uses by default on the apir host

struct Result {
    std::string name;
    double apir_us = 0, host_us = 0, rpc_us = 0; // median per operation (host: apir-host)
    size_t bytes = 0;                            // moved per operation, for MB/s
};

double median_us(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v.empty() ? 0 : v[v.size() / 2];
}

/// Times op `iters` times after `warm` untimed runs; the median in microseconds.
double time_op(int warm, int iters, const std::function<void()>& op) {
    for (int i = 0; i < warm; ++i)
        op();
    std::vector<double> us;
    us.reserve(static_cast<size_t>(iters));
    for (int i = 0; i < iters; ++i) {
        const auto t0 = Clock::now();
        op();
        us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
    }
    return median_us(std::move(us));
}

struct Work {
    ggml_context* ctx = nullptr;
    ggml_backend_buffer_t buf = nullptr;
    ggml_tensor *small = nullptr, *mib1 = nullptr, *mib64 = nullptr;
    ggml_tensor *a = nullptr, *b = nullptr, *out = nullptr;
    ggml_cgraph* graph = nullptr;

    explicit Work(ggml_backend_t backend) {
        ggml_init_params p{ggml_tensor_overhead() * 16 + ggml_graph_overhead(), nullptr, true};
        ctx = ggml_init(p);
        small = ggml_new_tensor_1d(ctx, GGML_TYPE_F32, 4);       // 16 bytes
        mib1 = ggml_new_tensor_1d(ctx, GGML_TYPE_F32, 1 << 18);  // 1 MiB
        mib64 = ggml_new_tensor_1d(ctx, GGML_TYPE_F32, 1 << 24); // 64 MiB
        a = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, 64, 64);
        b = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, 64, 64);
        out = ggml_add(ctx, ggml_mul_mat(ctx, a, b), b); // small graph: 2 nodes
        buf = ggml_backend_alloc_ctx_tensors(ctx, backend);
        graph = ggml_new_graph(ctx);
        ggml_build_forward_expand(graph, out);
    }
    ~Work() {
        ggml_backend_buffer_free(buf);
        ggml_free(ctx);
    }
};

struct Figures {
    double round_trip = 0, set_1m = 0, set_64m = 0, graph = 0;
};

Figures measure(ggml_backend_t backend, bool quick) {
    Work w(backend);
    if (!w.buf) {
        fmt::print(stderr, "ggml-backend-bench: {}: allocation failed\n",
                   ggml_backend_name(backend));
        std::exit(1);
    }
    std::vector<float> data(size_t{1} << 24, 0.5f);
    ggml_backend_tensor_set(w.a, data.data(), 0, ggml_nbytes(w.a));
    ggml_backend_tensor_set(w.b, data.data(), 0, ggml_nbytes(w.b));
    float tiny[4];
    Figures f;
    const int n = quick ? 1 : 4;
    f.round_trip = time_op(50, 500 * n, [&] { ggml_backend_tensor_get(w.small, tiny, 0, 16); });
    f.set_1m =
        time_op(5, 25 * n, [&] { ggml_backend_tensor_set(w.mib1, data.data(), 0, 1 << 20); });
    f.set_64m =
        time_op(1, 3 * n, [&] { ggml_backend_tensor_set(w.mib64, data.data(), 0, 64 << 20); });
    // Compute, then read 16 bytes of the result: ggml's RPC client returns from
    // graph_compute before the server has computed, so the read is what waits for it.
    f.graph = time_op(10, 100 * n, [&] {
        if (ggml_backend_graph_compute(backend, w.graph) != GGML_STATUS_SUCCESS) std::exit(1);
        ggml_backend_tensor_get(w.out, tiny, 0, 16);
    });
    // The graph really ran: every output is 64 * 0.25 + 0.5.
    float o[4];
    ggml_backend_tensor_get(w.out, o, 0, sizeof o);
    if (o[0] != 16.5f) {
        fmt::print(stderr, "ggml-backend-bench: {}: wrong graph result {}\n",
                   ggml_backend_name(backend), o[0]);
        std::exit(1);
    }
    return f;
}

int free_port() {
    int s = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    if (s < 0 || bind(s, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
        getsockname(s, reinterpret_cast<sockaddr*>(&a), &len) != 0)
        return -1;
    const int port = ntohs(a.sin_port);
    close(s);
    return port;
}

bool port_open(int port) {
    int s = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<uint16_t>(port));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    const bool ok = s >= 0 && connect(s, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
    if (s >= 0) close(s);
    return ok;
}

template <class Fn>
Fn rpc_proc(const char* name) {
    ggml_backend_reg_t reg = ggml_backend_reg_by_name("RPC");
    void* p = reg ? ggml_backend_reg_get_proc_address(reg, name) : nullptr;
    if (!p) {
        fmt::print(stderr, "ggml-backend-bench: ggml's RPC backend ({}) is not available\n", name);
        std::exit(1);
    }
    return reinterpret_cast<Fn>(p);
}

/// The RPC server: ggml's CPU backend on 127.0.0.1:port, until killed.
int serve(int port) {
    using start_fn = void (*)(const char*, const char*, size_t, size_t, ggml_backend_dev_t*);
    ggml_backend_dev_t cpu = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU);
    const std::string endpoint = fmt::format("127.0.0.1:{}", port);
    rpc_proc<start_fn>("ggml_backend_rpc_start_server")(endpoint.c_str(), nullptr, server_threads,
                                                        1, &cpu);
    return 0;
}

} // namespace

int main(int argc, char** argv) {
    bool quick = false, json = false;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        if (a == "--quick") {
            quick = true;
        } else if (a == "--json") {
            json = true;
        } else if (a == "--rpc-server" && i + 1 < argc) {
            ggml_backend_load_all();
            return serve(std::atoi(argv[++i]));
        } else {
            fmt::print("usage: ggml-backend-bench [--quick] [--json]\n");
            return a == "--help" ? 0 : 2;
        }
    }
    const char* peer = std::getenv("APIR_GGML_PEER_DIR");
    const std::string p = peer ? peer : "";
    if (p.empty() || !std::filesystem::exists(p + "/lib/libggml-virtgpu-backend.so.0")) {
        fmt::print("SKIP: APIR_GGML_PEER_DIR does not hold ggml's host backend\n");
        return 77;
    }
    ggml_log_set(
        [](ggml_log_level l, const char* t, void*) {
            if (l >= GGML_LOG_LEVEL_ERROR) fmt::print(stderr, "{}", t);
        },
        nullptr);
    ggml_backend_load_all();

    // apir: loopback to ggml's host backend over ggml's CPU backend.
    // APIR0 over the loopback to a host backend library (ggml's, or apir's own).
    std::vector<std::unique_ptr<apir::ggml_remote::Registry>> registries;
    auto apir_device = [&](const std::string& host_lib) -> ggml_backend_t {
        apir::ggml_remote::BackendConfig c;
        c.transport = apir::ggml_remote::TransportKind::loopback;
        c.backend_library = host_lib;
        c.host_config["apir.load_library.path"] = host_lib;
        c.host_config["ggml.library.path"] = p + "/lib/libggml-cpu.so.0";
        c.host_config["ggml.library.reg"] = "ggml_backend_cpu_reg";
        auto remote = apir::ggml_remote::Remote::open(
            c, apir::ggml_remote::ggml_logger(apir::LogLevel::warn));
        if (!remote) return fmt::print(stderr, "apir: {}\n", remote.error().message()), nullptr;
        auto reg = apir::ggml_remote::Registry::create(std::move(*remote));
        if (!reg) return fmt::print(stderr, "apir: {}\n", reg.error().message()), nullptr;
        registries.push_back(std::move(*reg));
        return ggml_backend_dev_init(ggml_backend_reg_dev_get(registries.back()->reg(), 0),
                                     nullptr);
    };
    ggml_backend_t apir_backend = apir_device(p + "/lib/libggml-virtgpu-backend.so.0");
    if (!apir_backend) return 1;
#ifdef APIR_GGML_HOST_BACKEND
    ggml_backend_t host_backend = apir_device(APIR_GGML_HOST_BACKEND);
    if (!host_backend) return 1;
#else
    ggml_backend_t host_backend = nullptr;
#endif

    // rpc: ggml's RPC server in a child process, on a free port of 127.0.0.1.
    const int port = free_port();
    if (port < 0) return fmt::print(stderr, "no free port\n"), 1;
    const std::string port_s = std::to_string(port);
    char* child_argv[] = {argv[0], const_cast<char*>("--rpc-server"),
                          const_cast<char*>(port_s.c_str()), nullptr};
    pid_t server = -1;
    if (posix_spawn(&server, "/proc/self/exe", nullptr, nullptr, child_argv, environ) != 0)
        return fmt::print(stderr, "cannot start the RPC server\n"), 1;
    auto stop_server = [&] {
        kill(server, SIGTERM);
        waitpid(server, nullptr, 0);
    };
    const auto until = Clock::now() + std::chrono::seconds(20);
    while (!port_open(port)) {
        if (Clock::now() > until) {
            stop_server();
            return fmt::print(stderr, "the RPC server did not listen on {}\n", port), 1;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    using add_fn = ggml_backend_reg_t (*)(const char*);
    const std::string endpoint = fmt::format("127.0.0.1:{}", port);
    ggml_backend_reg_t rpc_reg = rpc_proc<add_fn>("ggml_backend_rpc_add_server")(endpoint.c_str());
    ggml_backend_t rpc_backend =
        rpc_reg && ggml_backend_reg_dev_count(rpc_reg) > 0
            ? ggml_backend_dev_init(ggml_backend_reg_dev_get(rpc_reg, 0), nullptr)
            : nullptr;
    if (!apir_backend || !rpc_backend) {
        stop_server();
        return fmt::print(stderr, "a backend did not start (apir {}, rpc {})\n",
                          apir_backend != nullptr, rpc_backend != nullptr),
               1;
    }

    const Figures fa = measure(apir_backend, quick);
    const Figures fh = host_backend ? measure(host_backend, quick) : Figures{};
    const Figures fr = measure(rpc_backend, quick);
    ggml_backend_free(rpc_backend);
    if (host_backend) ggml_backend_free(host_backend);
    ggml_backend_free(apir_backend);
    stop_server();

    const Result rows[] = {
        {"round trip (16-byte get_tensor)", fa.round_trip, fh.round_trip, fr.round_trip, 16},
        {"set_tensor 1 MiB", fa.set_1m, fh.set_1m, fr.set_1m, size_t{1} << 20},
        {"set_tensor 64 MiB", fa.set_64m, fh.set_64m, fr.set_64m, size_t{64} << 20},
        {"graph (64x64 mul_mat + add) + 16-byte get", fa.graph, fh.graph, fr.graph, 0},
    };
    if (!json) {
        fmt::print("apir: in-process loopback to ggml's host backend; apir-host: the same to "
                   "apir's host backend (zero-copy buffers); rpc: TCP to a server process on "
                   "127.0.0.1 (medians)\n");
        fmt::print("{:<44} {:>12} {:>12} {:>12} {:>8}\n", "operation", "apir", "apir-host", "rpc",
                   "rpc/apir");
    }
    for (const Result& r : rows) {
        if (json) {
            fmt::print("{{\"bench\":\"ggml-backend {}\",\"apir_us\":{:.2f},\"apir_host_us\":{:.2f},"
                       "\"rpc_us\":{:.2f},\"rpc_over_apir\":{:.2f}}}\n",
                       r.name, r.apir_us, r.host_us, r.rpc_us, r.rpc_us / r.apir_us);
        } else {
            auto cell = [&](double us) {
                if (us <= 0) return std::string("-");
                return r.bytes > 4096 ? fmt::format("{:.0f} MB/s", r.bytes / us)
                                      : fmt::format("{:.1f} us", us);
            };
            fmt::print("{:<44} {:>12} {:>12} {:>12} {:>7.1f}x\n", r.name, cell(r.apir_us),
                       cell(r.host_us), cell(r.rpc_us), r.rpc_us / r.apir_us);
        }
    }
    return 0;
}
