// apir-ggml-bench: set_tensor / get_tensor through apir::ggml::Device over the threaded
// loopback, against memcpy of the same bytes measured in the same run (interleaved).
//
//     apir-ggml-bench [--json] [--quick] [--backend PATH [--ggml-lib PATH --ggml-reg NAME]]
//
// The host is ggml's own host backend over its CPU backend when APIR_GGML_PEER_DIR names a
// ggml build, otherwise the project's ggml test backend. Either way a set_tensor is two
// copies (guest bytes -> staging blob, blob -> the host's tensor) and a get_tensor two
// back, as in ggml; the reference is one memcpy of the same bytes, and two.
#include "report.hpp"

#include <apir/ggml/client.hpp>
#include <apir/loopback.hpp>

#include <sys/mman.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <thread>
#include <vector>

#ifndef APIR_GGML_BENCH_BACKEND
#define APIR_GGML_BENCH_BACKEND "libapir-ggml-test-backend.so"
#endif

namespace {

namespace ag = apir::ggml;
using apir_bench::Result;
using BenchClock = std::chrono::steady_clock;
using Session = apir::Session<apir::LoopbackTransport>;
using Device = ag::Device<apir::LoopbackTransport>;

[[noreturn]] void fatal(std::string_view what, const apir::Error& e) {
    fmt::print(stderr, "apir-ggml-bench: {}: {}\n", what, e);
    std::exit(1);
}
template <class T>
T take(apir::Expected<T> r, std::string_view what) {
    if (!r) fatal(what, r.error());
    return std::move(*r);
}
void take(apir::Expected<void> r, std::string_view what) {
    if (!r) fatal(what, r.error());
}

template <class T>
void keep(T& v) {
    asm volatile("" : : "r"(&v) : "memory");
}

double ns_since(BenchClock::time_point t0) {
    return static_cast<double>(
        std::chrono::duration_cast<std::chrono::nanoseconds>(BenchClock::now() - t0).count());
}

// Anonymous memory with every page touched (no first-touch faults while timing).
struct Pages {
    explicit Pages(size_t n) : size(n) {
        void* p = mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) fatal("mmap", apir::Error(apir::Errc::out_of_memory));
        data = static_cast<std::byte*>(p);
        for (size_t i = 0; i < n; ++i)
            data[i] = static_cast<std::byte>(i * 131);
    }
    ~Pages() { munmap(data, size); }
    Pages(const Pages&) = delete;
    Pages& operator=(const Pages&) = delete;
    std::byte* data;
    size_t size;
};

struct Target {
    std::string backend, lib, reg, label;
};

// Alternates the order of the two measurements from round to round.
template <class A, class B>
void in_turn(size_t round, A&& a, B&& b) {
    if (round % 2 == 0) {
        a();
        b();
    } else {
        b();
        a();
    }
}

double best(const std::vector<double>& v) {
    return *std::min_element(v.begin(), v.end());
}

Result bench_transfer(Device& dev, ag::Buffer buf, size_t bytes, size_t reps) {
    Pages src(bytes), dst(bytes), ref(bytes), ref2(bytes);
    auto t = ag::make_tensor(ag::Type::i8, {static_cast<uint32_t>(bytes)}).place(buf.handle, 0);
    std::span<const std::byte> in(src.data, bytes);
    std::span<std::byte> out(dst.data, bytes);
    // Warm: the staging blob grows to its size once, and the host's pages are touched.
    take(dev.set_tensor(t, in), "set_tensor");
    take(dev.get_tensor(t, out), "get_tensor");
    if (std::memcmp(src.data, dst.data, bytes) != 0) {
        fmt::print(stderr, "apir-ggml-bench: get_tensor returned other bytes\n");
        std::exit(1);
    }
    std::vector<double> set_ns, get_ns, memcpy_ns, two_ns;
    for (size_t i = 0; i < reps; ++i) {
        in_turn(
            i,
            [&] {
                auto t0 = BenchClock::now();
                take(dev.set_tensor(t, in), "set_tensor");
                set_ns.push_back(ns_since(t0));
                t0 = BenchClock::now();
                take(dev.get_tensor(t, out), "get_tensor");
                get_ns.push_back(ns_since(t0));
            },
            [&] {
                auto t0 = BenchClock::now();
                std::memcpy(ref.data, src.data, bytes);
                keep(*ref.data);
                memcpy_ns.push_back(ns_since(t0));
                t0 = BenchClock::now();
                std::memcpy(ref.data, src.data, bytes);
                keep(*ref.data);
                std::memcpy(ref2.data, ref.data, bytes);
                keep(*ref2.data);
                two_ns.push_back(ns_since(t0));
            });
    }
    const double b = static_cast<double>(bytes);
    const double s = b / best(set_ns), g = b / best(get_ns), m = b / best(memcpy_ns),
                 m2 = b / best(two_ns); // bytes/ns = GB/s
    const std::string mib = fmt::format("{}mib", bytes >> 20);
    Result r("ggml_transfer_" + mib,
             fmt::format("ggml set/get_tensor of {} MiB through Device, best of {} reps, GB/s",
                         bytes >> 20, reps));
    r.integer("bytes", bytes)
        .number("set_gbps", s, 2, "set_tensor", "GB/s")
        .number("get_gbps", g, 2, "get_tensor", "GB/s")
        .number("memcpy_gbps", m, 2, "reference: one memcpy", "GB/s")
        .number("two_memcpy_gbps", m2, 2, "reference: two memcpys (the copies a transfer makes)",
                "GB/s")
        .number("set_ratio", s / m, 3, "set_tensor / one memcpy")
        .number("get_ratio", g / m, 3, "get_tensor / one memcpy")
        .number("set_ratio_two", s / m2, 3, "set_tensor / two memcpys")
        .number("get_ratio_two", g / m2, 3, "get_tensor / two memcpys")
        .integer("reps", reps);
    return r;
}

Result bench_small_get(Device& dev, ag::Buffer buf, size_t rounds) {
    constexpr size_t batch = 200;
    auto t = ag::make_tensor(ag::Type::i8, {16}).place(buf.handle, 0);
    std::array<std::byte, 16> out{}, src{}, ref{};
    std::vector<double> get_ns, nop_ns, memcpy_ns;
    for (size_t i = 0; i < 20; ++i)
        take(dev.get_tensor(t, out), "get_tensor");
    for (size_t i = 0; i < rounds; ++i) {
        in_turn(
            i,
            [&] {
                auto t0 = BenchClock::now();
                for (size_t k = 0; k < batch; ++k)
                    take(dev.get_tensor(t, out), "get_tensor");
                get_ns.push_back(ns_since(t0) / batch);
                t0 = BenchClock::now();
                for (size_t k = 0; k < batch; ++k)
                    take(dev.device_count(), "device_get_device_count");
                nop_ns.push_back(ns_since(t0) / batch);
            },
            [&] {
                auto t0 = BenchClock::now();
                for (size_t k = 0; k < batch; ++k) {
                    src[0] = static_cast<std::byte>(k);
                    keep(src);
                    std::memcpy(ref.data(), src.data(), 16);
                    keep(ref);
                }
                memcpy_ns.push_back(ns_since(t0) / batch);
            });
    }
    auto median = [](std::vector<double> v) {
        std::nth_element(v.begin(), v.begin() + static_cast<long>(v.size() / 2), v.end());
        return v[v.size() / 2];
    };
    const double g = median(get_ns), n = median(nop_ns), m = median(memcpy_ns);
    Result r("ggml_get_16b", "ggml get_tensor of 16 bytes through Device, median per call, ns");
    r.number("get_ns", g, 1, "get_tensor of 16 bytes", "ns")
        .number("nop_ns", n, 1, "device_get_device_count (a call with no payload)", "ns")
        .number("memcpy_ns", m, 1, "reference: memcpy of 16 bytes", "ns")
        .number("ratio_memcpy", g / m, 1, "get_tensor / memcpy")
        .number("ratio_nop", g / n, 2, "get_tensor / call with no payload")
        .integer("batches", rounds)
        .integer("calls_per_batch", batch);
    return r;
}

int run(int argc, char** argv) {
    bool json = false, quick = false;
    Target target;
    if (const char* peer = std::getenv("APIR_GGML_PEER_DIR");
        peer && std::filesystem::exists(std::filesystem::path(peer) / "lib")) {
        const auto lib = std::filesystem::path(peer) / "lib";
        target = {(lib / "libggml-virtgpu-backend.so.0").string(),
                  (lib / "libggml-cpu.so.0").string(), "ggml_backend_cpu_reg",
                  "ggml's host backend over its CPU backend"};
    } else {
        target = {APIR_GGML_BENCH_BACKEND, "", "", "the project's ggml test backend"};
    }
    for (int i = 1; i < argc; ++i) {
        const std::string_view a = argv[i];
        auto value = [&]() -> std::string {
            if (i + 1 >= argc) {
                fmt::print(stderr, "apir-ggml-bench: {} needs a value\n", a);
                std::exit(2);
            }
            return argv[++i];
        };
        if (a == "--json") {
            json = true;
        } else if (a == "--quick") {
            quick = true;
        } else if (a == "--backend") {
            target = {value(), "", "", "the backend given"};
        } else if (a == "--ggml-lib") {
            target.lib = value();
        } else if (a == "--ggml-reg") {
            target.reg = value();
        } else {
            fmt::print("usage: apir-ggml-bench [--json] [--quick] [--backend PATH "
                       "[--ggml-lib PATH --ggml-reg NAME]]\n");
            return a == "-h" || a == "--help" ? 0 : 2;
        }
    }

    apir::LoopbackOptions lo;
    lo.host.config["apir.load_library.path"] = target.backend;
    if (!target.lib.empty()) lo.host.config["ggml.library.path"] = target.lib;
    if (!target.reg.empty()) lo.host.config["ggml.library.reg"] = target.reg;
    // ggml's host backend keeps global state and its CPU_Mapped buffers cannot be freed:
    // the session lives until the process exits.
    auto* session = new Session(apir::LoopbackTransport(std::move(lo)));
    take(session->connect(), "connect");
    auto* dev = new Device(*session);
    auto buft = take(dev->buffer_type(), "device_get_buffer_type");
    auto buf = take(dev->alloc_buffer(buft, size_t{64} << 20), "buffer_type_alloc_buffer");

    // How busy the machine is: on a loaded machine the per-call figures mean little.
    double load = -1;
    if (FILE* f = std::fopen("/proc/loadavg", "r")) {
        if (std::fscanf(f, "%lf", &load) != 1) load = -1;
        std::fclose(f);
    }
    if (!json)
        fmt::print("apir-ggml-bench: {} run, host: {}; ours and memcpy interleaved; "
                   "load average {:.1f} on {} CPUs\n\n",
                   quick ? "quick" : "full", target.label, load,
                   std::thread::hardware_concurrency());
    const size_t reps = quick ? 4 : 20;
    for (Result r : {bench_transfer(*dev, buf, size_t{1} << 20, quick ? 20 : 200),
                     bench_transfer(*dev, buf, size_t{64} << 20, reps),
                     bench_small_get(*dev, buf, quick ? 50 : 500)}) {
        r.flag("peer", target.label.starts_with("ggml's"), "host is ggml's own host backend");
        r.number("load_average", load, 1);
        fmt::print("{}\n", json ? r.json() : r.table());
    }
    take(dev->free_buffer(buf.handle), "buffer_free_buffer");
    std::fflush(stdout);
    std::_Exit(0); // see above: no teardown of ggml's host
}

} // namespace

int main(int argc, char** argv) {
    return run(argc, argv);
}
