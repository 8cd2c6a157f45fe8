// apir-frontend-bench: apir's guest (libggml-apir) against ggml's own guest frontend (the
// VirtGPU backend, libggml-virtgpu in ggml's libggml), like for like: both are unmodified
// ggml backends in a program that only calls ggml's API, both talk to the same host
// through the same virtual render node (libapir-vdrm.so preloaded: a simulated virtio-gpu
// device with apir's Host in the process), and the host runs the same backend library:
//
//   ggml       ggml's frontend ("[virtgpu] CPU", APIR capset) -> ggml's host backend
//              (libggml-virtgpu-backend) over ggml's CPU backend;
//   apir       libggml-apir ("APIR0", APIR_GGML_TRANSPORT=virtgpu) -> the same host;
//   apir-host  libggml-apir -> apir's own host backend (libggml-apir-host) over ggml's CPU
//              backend, with which libggml-apir makes zero-copy buffers (set/get are copies
//              in the guest), as ggml's frontend does with ggml's host backend (which
//              crashes when one is freed, so libggml-apir makes none with it).
//
// The node and ggml's backend registry are per process, so each configuration runs in a
// child process of its own; the parent starts the children in batches, the configurations
// interleaved (their order rotates each batch), and pools each line's samples over the
// batches: median, p10, p90, and the ratio of the medians apir / ggml. Every line checks
// its result (a get against what was set, a graph against a reference computed here), so
// broken work cannot pass for fast work.
//
//   apir-frontend-bench [--quick] [--json] [--batches N] [--only LINE]
//
// Needs APIR_GGML_PEER_DIR (a ggml build with ggml's frontend and host backend; exit 77
// without it). Run it under `taskset -c 0` for the figures with guest, host and the host's
// compute threads on one CPU (BENCHMARKS.md).
#include "report.hpp"

#include <apir/vdrm/vdrm.h>

#include <ggml-alloc.h>
#include <ggml-backend.h>
#include <ggml.h>

#include <fmt/format.h>

#include <dlfcn.h>
#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <sstream>
#include <string>
#include <vector>

extern char** environ;

namespace {

using Clock = std::chrono::steady_clock;

// ggml, loaded from APIR_GGML_PEER_DIR at run time (its headers give the declarations).
struct Ggml {
#define APIR_FB_FNS(X)                                                                             \
    X(ggml_init)                                                                                   \
    X(ggml_new_tensor_1d)                                                                          \
    X(ggml_new_tensor_2d)                                                                          \
    X(ggml_add)                                                                                    \
    X(ggml_mul_mat)                                                                                \
    X(ggml_new_graph)                                                                              \
    X(ggml_build_forward_expand)                                                                   \
    X(ggml_nbytes)                                                                                 \
    X(ggml_tensor_overhead)                                                                        \
    X(ggml_graph_overhead)                                                                         \
    X(ggml_log_set)                                                                                \
    X(ggml_backend_alloc_ctx_tensors)                                                              \
    X(ggml_backend_tensor_set)                                                                     \
    X(ggml_backend_tensor_get)                                                                     \
    X(ggml_backend_graph_compute)                                                                  \
    X(ggml_backend_dev_by_name)                                                                    \
    X(ggml_backend_dev_init)                                                                       \
    X(ggml_backend_dev_memory)                                                                     \
    X(ggml_backend_buffer_clear)                                                                   \
    X(ggml_backend_load)                                                                           \
    X(ggml_backend_reg_dev_count)                                                                  \
    X(ggml_backend_reg_dev_get)
#define APIR_FB_FIELD(f) decltype(&::f) f = nullptr;
    APIR_FB_FNS(APIR_FB_FIELD)

    bool load(void* h) {
        bool ok = true;
#define APIR_FB_LOAD(f)                                                                            \
    f = reinterpret_cast<decltype(&::f)>(dlsym(h, #f));                                            \
    if (!f) fmt::print(stderr, "missing {}\n", #f), ok = false;
        APIR_FB_FNS(APIR_FB_LOAD)
        return ok;
    }
};

Ggml g;

// The lines, in the order each child runs them.
struct Line {
    const char* key;   // JSON name
    const char* title; // table
    size_t bytes;      // moved per operation (MB/s in the table), 0: a latency
    int warm;          // untimed runs first, per child
    int quick, full;   // timed runs per child (--quick, default)
};
const Line lines[] = {
    {"small_call", "small call: buffer_clear, 4 KiB buffer", 0, 20, 150, 600},
    {"get_memory", "get_memory (a device query)", 0, 20, 150, 600},
    {"get_16", "get_tensor 16 B", 0, 20, 150, 600},
    {"set_1m", "set_tensor 1 MiB", size_t{1} << 20, 3, 25, 100},
    {"get_1m", "get_tensor 1 MiB", size_t{1} << 20, 3, 25, 100},
    {"set_64m", "set_tensor 64 MiB", size_t{64} << 20, 1, 3, 6},
    {"get_64m", "get_tensor 64 MiB", size_t{64} << 20, 1, 3, 6},
    {"graph_small", "graph 64x64 mul_mat + add, 16 B get", 0, 10, 60, 240},
    {"graph_large", "graph 10 x 512x512 mul_mat, 16 B get", 0, 2, 8, 32},
};
constexpr size_t n_lines = sizeof lines / sizeof lines[0];

struct Config {
    const char* name;  // column
    const char* about; // what it is
};
const Config configs[] = {
    {"ggml", "ggml's frontend (libggml-virtgpu) -> ggml's host backend"},
    {"apir", "libggml-apir -> ggml's host backend"},
    {"apir-host", "libggml-apir -> libggml-apir-host (zero-copy buffers)"},
};

constexpr int64_t large_dim = 512, large_tokens = 16, large_layers = 10;

float pattern(size_t tensor, size_t i) {
    return std::sin(0.37f * float(i % 4096) + 1.3f * float(tensor)) * 0.5f + float(i % 7) * 0.1f;
}

// The calling thread's CPU time: the guest's own work per operation (its waiting included;
// the node's ioctls run on it too, the same for every configuration).
double thread_cpu_us() {
    timespec ts{};
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return double(ts.tv_sec) * 1e6 + double(ts.tv_nsec) / 1e3;
}

[[noreturn]] void die(const std::string& why) {
    std::printf("FAIL %s\n", why.c_str());
    std::fflush(stdout);
    std::_Exit(1);
}

// ---- the child: one configuration, every line once ---------------------------------------

int child(const std::string& config, const std::string& peer, bool quick, const std::string& only) {
    const std::string lib = peer + "/lib/";
    void* h = dlopen((lib + "libggml.so.0").c_str(), RTLD_NOW | RTLD_GLOBAL);
    if (!h) die(dlerror());
    if (!g.load(h)) die("ggml lacks a function");
    g.ggml_log_set(
        [](ggml_log_level l, const char* t, void*) {
            if (l >= GGML_LOG_LEVEL_ERROR) std::fputs(t, stderr);
        },
        nullptr);
    auto counts = reinterpret_cast<int (*)(struct apir_vdrm_counts*)>(
        dlsym(RTLD_DEFAULT, "apir_vdrm_counts"));
    if (!counts) die("libapir-vdrm.so is not preloaded");
    auto executed = [&] {
        struct apir_vdrm_counts c {};
        return counts(&c) == 0 ? c.executed_commands : 0;
    };

    ggml_backend_dev_t dev = nullptr;
    if (config == "ggml") {
        dev = g.ggml_backend_dev_by_name("[virtgpu] CPU");
    } else {
        ggml_backend_reg_t reg = g.ggml_backend_load(APIR_FRONTEND_BENCH_GGML_APIR);
        if (reg && g.ggml_backend_reg_dev_count(reg) > 0) dev = g.ggml_backend_reg_dev_get(reg, 0);
    }
    if (!dev) die("no device (" + config + ")");
    if (config != "ggml" && g.ggml_backend_dev_by_name("[virtgpu] CPU"))
        die("ggml's frontend holds the node beside libggml-apir");
    ggml_backend_t backend = g.ggml_backend_dev_init(dev, nullptr);
    if (!backend) die("the device does not start");

    // The tensors of every line in one buffer. Nothing is freed: freeing a buffer of ggml's
    // frontend crashes ggml's host backend (docs/VDRM.md); everything goes with the process.
    ggml_init_params p{};
    p.mem_size = 64 * g.ggml_tensor_overhead() + 2 * g.ggml_graph_overhead();
    p.no_alloc = true;
    ggml_context* ctx = g.ggml_init(p);
    ggml_tensor* t16 = g.ggml_new_tensor_1d(ctx, GGML_TYPE_F32, 4);
    ggml_tensor* t1m = g.ggml_new_tensor_1d(ctx, GGML_TYPE_F32, 1 << 18);
    ggml_tensor* t64m = g.ggml_new_tensor_1d(ctx, GGML_TYPE_F32, 1 << 24);
    ggml_tensor* a = g.ggml_new_tensor_2d(ctx, GGML_TYPE_F32, 64, 64);
    ggml_tensor* b = g.ggml_new_tensor_2d(ctx, GGML_TYPE_F32, 64, 64);
    ggml_tensor* small_out = g.ggml_add(ctx, g.ggml_mul_mat(ctx, a, b), b);
    ggml_tensor* x = g.ggml_new_tensor_2d(ctx, GGML_TYPE_F32, large_dim, large_tokens);
    std::vector<ggml_tensor*> w;
    ggml_tensor* large_out = x;
    for (int l = 0; l < large_layers; ++l) {
        w.push_back(g.ggml_new_tensor_2d(ctx, GGML_TYPE_F32, large_dim, large_dim));
        large_out = g.ggml_mul_mat(ctx, w.back(), large_out);
    }
    ggml_backend_buffer_t buf = g.ggml_backend_alloc_ctx_tensors(ctx, backend);
    if (!buf) die("allocation failed");
    // The small call's buffer: 4 KiB, so that clearing it costs the host next to nothing.
    ggml_context* clear_ctx = g.ggml_init(p);
    ggml_tensor* clear_t = g.ggml_new_tensor_1d(clear_ctx, GGML_TYPE_F32, 1024);
    ggml_backend_buffer_t clear_buf = g.ggml_backend_alloc_ctx_tensors(clear_ctx, backend);
    if (!clear_buf) die("allocation failed");
    ggml_cgraph* small_graph = g.ggml_new_graph(ctx);
    g.ggml_build_forward_expand(small_graph, small_out);
    ggml_cgraph* large_graph = g.ggml_new_graph(ctx);
    g.ggml_build_forward_expand(large_graph, large_out);

    auto fill = [](std::vector<float>& v, size_t tensor, float scale) {
        for (size_t i = 0; i < v.size(); ++i)
            v[i] = pattern(tensor, i) * scale;
    };
    std::vector<float> src(size_t{1} << 24), dst(size_t{1} << 24);
    fill(src, 1, 1.0f);
    const float v16[4] = {1.5f, -2.25f, 3.125f, 0.0625f};
    g.ggml_backend_tensor_set(t16, v16, 0, sizeof v16);
    std::vector<float> va(64 * 64), vb(64 * 64), vx(size_t(large_dim * large_tokens));
    std::vector<std::vector<float>> vw(large_layers, std::vector<float>(large_dim * large_dim));
    fill(va, 2, 0.25f);
    fill(vb, 3, 0.25f);
    fill(vx, 4, 1.0f);
    for (int l = 0; l < large_layers; ++l)
        fill(vw[size_t(l)], size_t(5 + l), 1.0f / std::sqrt(float(large_dim)));
    g.ggml_backend_tensor_set(a, va.data(), 0, g.ggml_nbytes(a));
    g.ggml_backend_tensor_set(b, vb.data(), 0, g.ggml_nbytes(b));
    g.ggml_backend_tensor_set(x, vx.data(), 0, g.ggml_nbytes(x));
    for (int l = 0; l < large_layers; ++l)
        g.ggml_backend_tensor_set(w[size_t(l)], vw[size_t(l)].data(), 0,
                                  g.ggml_nbytes(w[size_t(l)]));

    // References: ggml's mul_mat(A, B)[n][m] = sum_k A[m][k] * B[n][k].
    auto mul_mat = [](const std::vector<double>& wt, const std::vector<double>& in, int64_t k,
                      int64_t m, int64_t n) {
        std::vector<double> out(size_t(m * n));
        for (int64_t j = 0; j < n; ++j)
            for (int64_t i = 0; i < m; ++i) {
                double s = 0;
                for (int64_t q = 0; q < k; ++q)
                    s += wt[size_t(i * k + q)] * in[size_t(j * k + q)];
                out[size_t(j * m + i)] = s;
            }
        return out;
    };
    auto as_double = [](const std::vector<float>& v) {
        return std::vector<double>(v.begin(), v.end());
    };
    std::vector<double> small_ref = mul_mat(as_double(va), as_double(vb), 64, 64, 64);
    for (size_t i = 0; i < small_ref.size(); ++i)
        small_ref[i] += vb[i];
    std::vector<double> large_ref = as_double(vx);
    for (int l = 0; l < large_layers; ++l)
        large_ref =
            mul_mat(as_double(vw[size_t(l)]), large_ref, large_dim, large_dim, large_tokens);
    auto check_graph = [&](ggml_tensor* out, const std::vector<double>& ref, const char* what) {
        std::vector<float> got(ref.size());
        g.ggml_backend_tensor_get(out, got.data(), 0, got.size() * sizeof(float));
        double scale = 0, worst = 0;
        for (double r : ref)
            scale = std::max(scale, std::fabs(r));
        for (size_t i = 0; i < ref.size(); ++i) {
            if (!std::isfinite(got[i])) die(fmt::format("{}: element {} is not finite", what, i));
            worst = std::max(worst, std::fabs(double(got[i]) - ref[i]) / scale);
        }
        if (worst > 1e-4) die(fmt::format("{}: off by {:.3g} of its scale", what, worst));
    };

    float out16[4];
    auto get16 = [&](ggml_tensor* t) { g.ggml_backend_tensor_get(t, out16, 0, sizeof out16); };
    size_t free_mem = 0, total_mem = 0;
    int repeat = 1;
    if (const char* r = std::getenv("APIR_FRONTEND_BENCH_REPEAT"))
        repeat = std::max(1, std::atoi(r));
    for (size_t li = 0; li < n_lines; ++li) {
        const Line& line = lines[li];
        const std::string key = line.key;
        if (!only.empty() && key != only) continue;
        std::function<void(int)> op, before, after;
        if (key == "small_call") {
            // Bytes that the clears must turn to zeros (checked after the line).
            g.ggml_backend_tensor_set(clear_t, src.data(), 0, g.ggml_nbytes(clear_t));
            op = [&](int) { g.ggml_backend_buffer_clear(clear_buf, 0); };
        } else if (key == "get_memory") {
            op = [&](int) { g.ggml_backend_dev_memory(dev, &free_mem, &total_mem); };
            after = [&](int) {
                if (total_mem == 0) die("get_memory: no memory reported");
            };
        } else if (key == "get_16") {
            before = [&](int) { std::memset(out16, 0, sizeof out16); };
            op = [&](int) { get16(t16); };
            after = [&](int) {
                if (std::memcmp(out16, v16, sizeof v16) != 0) die("get 16 B: wrong bytes");
            };
        } else if (key == "set_1m" || key == "set_64m") {
            ggml_tensor* t = key == "set_1m" ? t1m : t64m;
            // Each set writes other bytes (the first float is the iteration's).
            before = [&](int i) { src[0] = float(i); };
            op = [&, t](int) { g.ggml_backend_tensor_set(t, src.data(), 0, line.bytes); };
            after = nullptr;
        } else if (key == "get_1m" || key == "get_64m") {
            ggml_tensor* t = key == "get_1m" ? t1m : t64m;
            src[0] = 0.5f;
            g.ggml_backend_tensor_set(t, src.data(), 0, line.bytes);
            const size_t last = line.bytes / sizeof(float) - 1;
            before = [&, last](int) { dst[0] = dst[last] = -1.0f; };
            op = [&, t](int) { g.ggml_backend_tensor_get(t, dst.data(), 0, line.bytes); };
            after = [&, last](int) {
                if (dst[0] != src[0] || dst[last] != src[last]) die(key + ": wrong bytes");
            };
        } else if (key == "graph_small" || key == "graph_large") {
            ggml_cgraph* gr = key == "graph_small" ? small_graph : large_graph;
            ggml_tensor* out = key == "graph_small" ? small_out : large_out;
            op = [&, gr, out](int) {
                if (g.ggml_backend_graph_compute(backend, gr) != GGML_STATUS_SUCCESS)
                    die(key + ": graph_compute failed");
                get16(out);
            };
        }
        const int warm = line.warm, iters = (quick ? line.quick : line.full) * repeat;
        for (int i = 0; i < warm; ++i) {
            if (before) before(i);
            op(i);
            if (after) after(i);
        }
        std::vector<double> us, cpu;
        const uint64_t commands0 = executed();
        for (int i = 0; i < iters; ++i) {
            if (before) before(i);
            const double c0 = thread_cpu_us();
            const auto t0 = Clock::now();
            op(i);
            const auto t1 = Clock::now();
            cpu.push_back(thread_cpu_us() - c0);
            us.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
            if (after) after(i);
        }
        const double commands = double(executed() - commands0) / iters;
        // A graph ran on the host, through the node, every time.
        if (key.rfind("graph", 0) == 0 && commands < 1) die(key + ": no command reached the host");
        // What the line wrote or computed is right.
        if (key == "small_call") {
            std::vector<float> z(1024, -1.0f);
            g.ggml_backend_tensor_get(clear_t, z.data(), 0, z.size() * sizeof(float));
            for (float f : z)
                if (f != 0.0f) die("buffer_clear: the buffer is not cleared");
        } else if (key == "set_1m" || key == "set_64m") {
            ggml_tensor* t = key == "set_1m" ? t1m : t64m;
            std::fill(dst.begin(), dst.end(), -1.0f);
            g.ggml_backend_tensor_get(t, dst.data(), 0, line.bytes);
            if (std::memcmp(dst.data(), src.data(), line.bytes) != 0) die(key + ": wrong bytes");
        } else if (key == "get_1m" || key == "get_64m") {
            if (std::memcmp(dst.data(), src.data(), line.bytes) != 0) die(key + ": wrong bytes");
        } else if (key == "graph_small") {
            check_graph(small_out, small_ref, "small graph");
        } else if (key == "graph_large") {
            check_graph(large_out, large_ref, "large graph");
        }
        std::printf("S %s %.3f", line.key, commands);
        for (double u : us)
            std::printf(" %.3f", u);
        std::printf("\nC %s", line.key);
        for (double u : cpu)
            std::printf(" %.3f", u);
        std::printf("\n");
    }
    std::printf("OK\n");
    std::fflush(stdout);
    // ggml's frontend and its buffers go with the process, as do libggml-apir's.
    std::_Exit(0);
}

// ---- the parent: batches of children, the configurations interleaved ---------------------

struct Samples {
    std::vector<double> us, cpu;
    double commands = 0;
};

double percentile(std::vector<double> v, double q) {
    if (v.empty()) return NAN;
    std::sort(v.begin(), v.end());
    return v[std::min(v.size() - 1, size_t(q * double(v.size() - 1) + 0.5))];
}

/// Runs one child; false (and its output) when it failed.
bool run_child(const char* self, const std::string& config, bool quick, const std::string& only,
               const std::string& peer, std::map<std::string, Samples>& into) {
    const std::string lib = peer + "/lib/";
    const std::string ggml_host = lib + "libggml-virtgpu-backend.so.0";
    std::string host = ggml_host;
#ifdef APIR_FRONTEND_BENCH_APIR_HOST
    if (config == "apir-host") host = APIR_FRONTEND_BENCH_APIR_HOST;
#endif
    std::string host_config =
        "ggml.library.path=" + lib + "libggml-cpu.so.0;ggml.library.reg=ggml_backend_cpu_reg";
    // ggml's CPU backend computes with 4 threads under ggml's host backend (ggml's default);
    // apir's host backend would take the usable CPUs: the same 4, so the columns compute alike.
    if (config == "apir-host") host_config += ";ggml.cpu.threads=4";
    std::map<std::string, std::string> set = {
        {"LD_PRELOAD", APIR_FRONTEND_BENCH_VDRM},
        {"APIR_VDRM_BACKEND", host},
        {"APIR_VDRM_CONFIG", host_config},
        {"GGML_NO_BACKTRACE", "1"},
    };
    if (config == "ggml") {
        set["GGML_REMOTING_USE_APIR_CAPSET"] = "1";
    } else {
        set["APIR_GGML_TRANSPORT"] = "virtgpu";
        // ggml's frontend, in ggml's libggml, opens the node when ggml's registry starts,
        // before libggml-apir is loaded, and would take the host's backend (libggml-apir
        // then refuses to share the device). The node fails that first DRM VERSION call,
        // so ggml's frontend registers no device and leaves the node to libggml-apir.
        set["APIR_VDRM_FAULT"] = "version=EIOx1";
        set["APIR_GGML_LOG"] = "error";
    }
    // The process's environment without what the children are given (or must not inherit).
    const char* drop[] = {"LD_PRELOAD",          "APIR_VDRM_",     "GGML_REMOTING_",
                          "APIR_GGML_TRANSPORT", "APIR_GGML_NODE", "APIR_GGML_LOG",
                          "GGML_NO_BACKTRACE"};
    std::vector<std::string> env;
    for (char** e = environ; *e; ++e) {
        const std::string s = *e;
        bool keep = true;
        for (const char* d : drop)
            keep = keep && s.rfind(d, 0) != 0;
        if (keep) env.push_back(s);
    }
    for (const auto& [k, v] : set)
        env.push_back(k + "=" + v);
    std::vector<char*> envp;
    for (auto& s : env)
        envp.push_back(s.data());
    envp.push_back(nullptr);
    std::string c = config;
    std::string mode = quick ? "--quick" : "--full";
    std::string o = only;
    char* argv[] = {const_cast<char*>(self),
                    const_cast<char*>("--child"),
                    c.data(),
                    mode.data(),
                    o.data(),
                    nullptr};

    int out[2];
    if (pipe2(out, O_CLOEXEC) != 0) return false;
    FILE* err = std::tmpfile(); // the child's stderr, shown when it fails
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, out[1], 1);
    if (err) posix_spawn_file_actions_adddup2(&fa, fileno(err), 2);
    pid_t pid = -1;
    const int rc = posix_spawn(&pid, "/proc/self/exe", &fa, nullptr, argv, envp.data());
    posix_spawn_file_actions_destroy(&fa);
    close(out[1]);
    std::string text;
    if (rc == 0) {
        char chunk[65536];
        ssize_t n;
        while ((n = read(out[0], chunk, sizeof chunk)) > 0)
            text.append(chunk, size_t(n));
    }
    close(out[0]);
    int status = 0;
    if (rc == 0) waitpid(pid, &status, 0);
    const bool ok = rc == 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0 &&
                    text.find("\nOK\n") != std::string::npos;
    if (!ok) {
        fmt::print(stderr, "apir-frontend-bench: the {} child failed (status {:#x}):\n{}", config,
                   status, text);
        if (err) {
            std::rewind(err);
            char chunk[4096];
            size_t n;
            std::string e;
            while ((n = std::fread(chunk, 1, sizeof chunk, err)) > 0)
                e.append(chunk, n);
            if (e.size() > 4000) e = "...\n" + e.substr(e.size() - 4000);
            fmt::print(stderr, "its stderr:\n{}\n", e);
        }
    }
    if (err) std::fclose(err);
    if (!ok) return false;
    std::istringstream in(text);
    std::string tag;
    while (in >> tag) {
        if (tag != "S" && tag != "C") continue;
        std::string key;
        in >> key;
        Samples& s = into[key];
        if (tag == "S") in >> s.commands;
        std::string rest;
        std::getline(in, rest);
        std::istringstream nums(rest);
        double u;
        while (nums >> u)
            (tag == "S" ? s.us : s.cpu).push_back(u);
    }
    return true;
}

} // namespace

int main(int argc, char** argv) {
    bool quick = false, json = false;
    int batches = 0;
    std::string only; // one line (its key), e.g. to profile it
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        if (a == "--child" && i + 2 < argc) {
            // A child: --child CONFIG --quick|--full [LINE]
            const char* peer = std::getenv("APIR_GGML_PEER_DIR");
            return child(argv[i + 1], peer ? peer : "", std::string(argv[i + 2]) == "--quick",
                         i + 3 < argc ? argv[i + 3] : "");
        } else if (a == "--quick") {
            quick = true;
        } else if (a == "--json") {
            json = true;
        } else if (a == "--batches" && i + 1 < argc) {
            batches = std::atoi(argv[++i]);
        } else if (a == "--only" && i + 1 < argc) {
            only = argv[++i];
        } else {
            fmt::print(
                "usage: apir-frontend-bench [--quick] [--json] [--batches N] [--only LINE]\n");
            return a == "--help" ? 0 : 2;
        }
    }
    const char* peer_env = std::getenv("APIR_GGML_PEER_DIR");
    const std::string peer = peer_env ? peer_env : "";
    for (const char* f : {"libggml.so.0", "libggml-virtgpu.so.0", "libggml-virtgpu-backend.so.0",
                          "libggml-cpu.so.0"}) {
        if (peer.empty() || !std::filesystem::exists(peer + "/lib/" + f)) {
            fmt::print("SKIP: APIR_GGML_PEER_DIR does not hold ggml's frontend and host backend "
                       "(lib/{})\n",
                       f);
            return 77;
        }
    }
    // The node and libggml-apir, where this build made them (the node is the last word of
    // what LD_PRELOAD takes: a sanitizer build puts its runtime first).
    const std::string node = APIR_FRONTEND_BENCH_VDRM;
    for (const std::string& f :
         {node.substr(node.rfind(' ') + 1), std::string(APIR_FRONTEND_BENCH_GGML_APIR)}) {
        if (!std::filesystem::exists(f)) {
            fmt::print("SKIP: {} is not built\n", f);
            return 77;
        }
    }
    if (batches <= 0) batches = quick ? 2 : 6;

    std::vector<std::string> names;
    for (const Config& c : configs) {
#ifndef APIR_FRONTEND_BENCH_APIR_HOST
        if (std::string(c.name) == "apir-host") continue;
#endif
        names.push_back(c.name);
    }
    std::map<std::string, std::map<std::string, Samples>> all; // config -> line -> samples
    const auto t0 = Clock::now();
    for (int b = 0; b < batches; ++b) {
        for (size_t k = 0; k < names.size(); ++k) {
            const std::string& c = names[(size_t(b) + k) % names.size()];
            if (!run_child(argv[0], c, quick, only, peer, all[c])) return 1;
        }
    }
    const double seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    double load[3] = {0, 0, 0};
    if (getloadavg(load, 3) < 0) load[0] = NAN;

    auto has = [&](const std::string& c) { return all.count(c) > 0; };
    if (!json) {
        fmt::print("apir-frontend-bench: {} batches, configurations interleaved, {:.0f} s, load "
                   "average {:.2f}\n",
                   batches, seconds, load[0]);
        for (const auto& n : names)
            for (const Config& c : configs)
                if (n == c.name) fmt::print("  {:<10} {}\n", c.name, c.about);
        fmt::print("medians [p10-p90] in us (MB/s for 1 MiB and up); apir/ggml, host/ggml: "
                   "ratios of the median times of apir and apir-host to ggml's;\ncmd: commands "
                   "the host ran per operation; cpu: the calling thread's CPU per operation "
                   "(median, us); g/a/h: ggml/apir/apir-host\n");
        fmt::print("{:<38} {:>22} {:>22} {:>9} {:>22} {:>9} {:>7} {:>16}\n", "line", "ggml", "apir",
                   "apir/ggml", "apir-host", "host/ggml", "cmd", "cpu");
    }
    for (const Line& line : lines) {
        if (!only.empty() && only != line.key) continue;
        auto stats = [&](const std::string& c) {
            struct S {
                double med, p10, p90, commands, cpu;
            };
            if (!has(c) || all[c][line.key].us.empty()) return S{NAN, NAN, NAN, NAN, NAN};
            const auto& v = all[c][line.key];
            return S{percentile(v.us, 0.5), percentile(v.us, 0.1), percentile(v.us, 0.9),
                     v.commands, percentile(v.cpu, 0.5)};
        };
        const auto sg = stats("ggml"), sa = stats("apir"), sh = stats("apir-host");
        const double ratio = sa.med / sg.med, host_ratio = sh.med / sg.med;
        if (json) {
            apir_bench::Result r(std::string("frontend ") + line.key, line.title);
            r.number("ggml_us", sg.med, 2)
                .number("ggml_p10_us", sg.p10, 2)
                .number("ggml_p90_us", sg.p90, 2)
                .number("apir_us", sa.med, 2)
                .number("apir_p10_us", sa.p10, 2)
                .number("apir_p90_us", sa.p90, 2)
                .number("apir_host_us", sh.med, 2)
                .number("apir_host_p10_us", sh.p10, 2)
                .number("apir_host_p90_us", sh.p90, 2)
                .number("ggml_commands", sg.commands, 2)
                .number("apir_commands", sa.commands, 2)
                .number("apir_host_commands", sh.commands, 2)
                .number("ggml_cpu_us", sg.cpu, 2)
                .number("apir_cpu_us", sa.cpu, 2)
                .number("apir_host_cpu_us", sh.cpu, 2)
                .number("apir_host_over_ggml", host_ratio, 2)
                .integer("batches", uint64_t(batches))
                .number("load_average", load[0], 2)
                .target("apir_over_ggml", ratio, ratio <= 1.0,
                        "apir <= 1.0x ggml's frontend (medians)");
            fmt::print("{}\n", r.json());
            continue;
        }
        auto cell = [&](double med, double p10, double p90) {
            if (!std::isfinite(med)) return std::string("-");
            if (line.bytes >= (size_t{1} << 20)) {
                const double mb = double(line.bytes) / 1e6;
                return fmt::format("{:.0f} [{:.0f}-{:.0f}]", mb / (med / 1e6), mb / (p90 / 1e6),
                                   mb / (p10 / 1e6));
            }
            // Below a microsecond, tenths would round a copy in place to 0.0 or 0.1.
            if (p90 < 1.0) return fmt::format("{:.2f} [{:.2f}-{:.2f}]", med, p10, p90);
            return fmt::format("{:.1f} [{:.1f}-{:.1f}]", med, p10, p90);
        };
        auto num = [](double c, int d) {
            return std::isfinite(c) ? fmt::format("{:.{}f}", c, d) : std::string("-");
        };
        fmt::print("{:<38} {:>22} {:>22} {:>8.2f}x {:>22} {:>8}x {:>7} {:>16}\n", line.title,
                   cell(sg.med, sg.p10, sg.p90), cell(sa.med, sa.p10, sa.p90), ratio,
                   cell(sh.med, sh.p10, sh.p90), num(host_ratio, 2),
                   num(sg.commands, 0) + "/" + num(sa.commands, 0) + "/" + num(sh.commands, 0),
                   num(sg.cpu, 0) + "/" + num(sa.cpu, 0) + "/" + num(sh.cpu, 0));
    }
    return 0;
}
