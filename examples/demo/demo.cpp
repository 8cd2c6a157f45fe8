// The main demo: a whole APIR session in one process, over the threaded loopback (or,
// with --transport vtest, against virglrenderer's host behind virgl_test_server).
//
// handshake -> load the demo backend -> typed calls -> timed Add calls -> a 64 MiB bulk
// transfer through shared memory -> per-command counters. Run with --help for the options.
#include "demo_protocol.hpp"

#include <apir/apir.hpp>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fmt/core.h>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#ifndef APIR_DEMO_BACKEND_PATH
#define APIR_DEMO_BACKEND_PATH "libapir-demo-backend.so"
#endif

namespace {

using namespace std::chrono;

void usage() {
    fmt::print(
        "usage: apir-demo [options]\n"
        "\n"
        "Runs an APIR session over the loopback transport (or vtest): handshake, LOADLIBRARY,\n"
        "a few typed FORWARD calls, timed Add calls (median and p99 latency), a bulk\n"
        "transfer through shared memory (the copy into it, and the copy plus the host's\n"
        "checksum pass over it), and the session's per-command counters.\n"
        "\n"
        "options:\n"
        "  --backend PATH     APIR backend library for the host to load\n"
        "                     (default: the demo backend, {})\n"
        "  --config KEY=VAL   host configuration passed to the backend through get_config\n"
        "                     (repeatable; e.g. ggml.library.path=/path/libggml-vulkan.so)\n"
        "  --inline           run the host inside submit() instead of on a host thread\n"
        "  --transport loopback|vtest  loopback: a host in this process (default);\n"
        "                     vtest: virglrenderer's host behind virgl_test_server,\n"
        "                     started with VIRGL_APIR_BACKEND_LIBRARY=the demo backend\n"
        "                     (--backend and --config are then the server's business)\n"
        "  --vtest-socket P   vtest: the server's socket (default $VTEST_SOCKET_NAME,\n"
        "                     else /tmp/.virgl_test)\n"
        "  --calls N          number of timed Add calls (default 20000)\n"
        "  --bulk-mib N       size of the bulk transfer in MiB (default 64; three rounds)\n"
        "  -v, --verbose      log host and session messages\n"
        "  -h, --help         this text\n"
        "\n"
        "With another backend library (e.g. ggml's libggml-virtgpu-backend.so) the demo\n"
        "stops after LOADLIBRARY: its calls belong to that backend.\n"
        "exit codes: 0 success, 1 a call failed, 2 bad arguments\n",
        APIR_DEMO_BACKEND_PATH);
}

double percentile(std::vector<double>& v, double p) {
    if (v.empty()) return 0;
    size_t k = static_cast<size_t>(p * static_cast<double>(v.size() - 1));
    std::nth_element(v.begin(), v.begin() + static_cast<long>(k), v.end());
    return v[k];
}

// A whole decimal number, or nothing ("abc", "12x", "-1" and "" are not numbers).
std::optional<size_t> parse_count(std::string_view text) {
    size_t v = 0;
    const char* end = text.data() + text.size();
    auto [ptr, ec] = std::from_chars(text.data(), end, v);
    if (ec != std::errc{} || ptr != end || text.empty()) return std::nullopt;
    return v;
}

template <class T>
bool check(const apir::Expected<T>& r, std::string_view what) {
    if (r) return true;
    fmt::print("{} failed: {}\n", what, r.error());
    return false;
}

} // namespace

int main(int argc, char** argv) {
    apir::LoopbackOptions lo;
    std::string backend = APIR_DEMO_BACKEND_PATH;
    size_t calls = 20000;
    size_t bulk_mib = 64;
    apir::LogLevel level = apir::LogLevel::warn;
    bool vtest = false;
    std::string vtest_socket;

    for (int i = 1; i < argc; ++i) {
        std::string_view a = argv[i];
        auto value = [&]() -> const char* {
            if (i + 1 >= argc) {
                fmt::print(stderr, "apir-demo: {} needs a value\n", a);
                std::exit(2);
            }
            return argv[++i];
        };
        if (a == "-h" || a == "--help") {
            usage();
            return 0;
        } else if (a == "--backend") {
            backend = value();
        } else if (a == "--config") {
            std::string_view kv = value();
            auto eq = kv.find('=');
            if (eq == std::string_view::npos) {
                fmt::print(stderr, "apir-demo: --config wants KEY=VALUE, got '{}'\n", kv);
                return 2;
            }
            lo.host.config[std::string(kv.substr(0, eq))] = std::string(kv.substr(eq + 1));
        } else if (a == "--inline") {
            lo.mode = apir::LoopbackOptions::Mode::inline_host;
        } else if (a == "--transport") {
            std::string_view t = value();
            if (t != "loopback" && t != "vtest") {
                fmt::print(stderr, "apir-demo: --transport loopback or vtest, not '{}'\n", t);
                return 2;
            }
            vtest = t == "vtest";
        } else if (a == "--vtest-socket") {
            vtest_socket = value();
        } else if (a == "--calls" || a == "--bulk-mib") {
            const char* text = value();
            auto n = parse_count(text);
            if (!n || (a == "--bulk-mib" && (*n == 0 || *n > 4096))) {
                fmt::print(stderr, "apir-demo: {} wants {}, got '{}'\n", a,
                           a == "--calls" ? "a whole number" : "a whole number from 1 to 4096",
                           text);
                return 2;
            }
            (a == "--calls" ? calls : bulk_mib) = *n;
        } else if (a == "-v" || a == "--verbose") {
            level = apir::LogLevel::debug;
        } else {
            fmt::print(stderr, "apir-demo: unknown option '{}' (try --help)\n", a);
            return 2;
        }
    }
    const bool own_backend = backend == APIR_DEMO_BACKEND_PATH;
    lo.host.config[std::string(apir::config_library_path)] = backend;
    lo.host.logger = apir::Logger(apir::stderr_sink, level);
    apir::SessionOptions so;
    so.logger = apir::Logger(apir::stderr_sink, level);
    so.time_calls = true; // the summary below shows mean and max times

    std::optional<apir::AnyTransport> transport;
    if (vtest) {
        apir::VtestOptions vo;
        vo.socket_path = vtest_socket;
        vo.logger = apir::Logger(apir::stderr_sink, level);
        auto t = apir::VtestTransport::open(std::move(vo));
        if (!check(t, "vtest open")) return 1;
        transport.emplace(std::move(*t));
    } else {
        transport.emplace(apir::LoopbackTransport(std::move(lo)));
    }
    apir::Session session(std::move(*transport), so);
    fmt::print("transport: {}\n", session.transport().name());

    // 1. Handshake and LOADLIBRARY.
    auto hello = session.connect();
    if (!check(hello, "connect")) return 1;
    fmt::print("handshake: guest APIR {}.{}, host APIR {}.{}\n", apir::protocol_major,
               apir::protocol_minor, hello->major, hello->minor);
    fmt::print("library loaded: {}\n", backend);
    if (!own_backend) {
        fmt::print("(not the demo backend: stopping after LOADLIBRARY)\n");
        return 0;
    }

    // 2. A handful of typed calls.
    auto echo = session.call<demo::Echo>(demo::EchoRequest{42, "hello, host"});
    if (!check(echo, "echo")) return 1;
    fmt::print("echo: tag {} text \"{}\"\n", echo->tag, echo->text);

    auto sum = session.call<demo::Add>(demo::AddRequest{40, 2});
    if (!check(sum, "add")) return 1;
    fmt::print("add: 40 + 2 = {}\n", sum->sum);

    // Two failures on purpose, to show what a caller gets back: a backend's own error
    // code, and a command the backend does not have. Neither ends the session.
    auto failed = session.call<demo::Fail>(demo::FailRequest{7});
    fmt::print("fail(7), a deliberate backend error: {}\n",
               failed ? "unexpected success" : failed.error().message());

    auto unknown = session.call<apir::Forward<99, apir::Empty>>(apir::Empty{});
    fmt::print("command 99, deliberately one the backend lacks: {}\n",
               unknown ? "unexpected success" : unknown.error().message());
    if (failed || unknown) return 1;

    // 3. Latency of small calls.
    std::vector<double> us;
    us.reserve(calls);
    for (size_t i = 0; i < calls; ++i) {
        nanoseconds took{};
        apir::CallOptions co;
        co.duration = &took;
        auto r = session.call<demo::Add>(demo::AddRequest{static_cast<int64_t>(i), 1}, co);
        if (!check(r, "add") || r->sum != static_cast<int64_t>(i) + 1) return 1;
        us.push_back(duration<double, std::micro>(took).count());
    }
    fmt::print("{} add calls: median {:.2f} µs, p99 {:.2f} µs\n", calls, percentile(us, 0.5),
               percentile(us, 0.99));

    // 4. Bulk, guest to host: copy the data into a staging blob (shared memory), then the
    // host reads all of it in place (Checksum). Three rounds: the first maps a fresh blob
    // (page faults), the later ones reuse it; the best later round is reported.
    const size_t bytes = bulk_mib << 20;
    std::vector<std::byte> source(bytes);
    demo::fill_pattern(source.data(), source.size(), 1234);
    const uint64_t expected = demo::checksum(source.data(), source.size());
    const auto gbps = [&](nanoseconds d) {
        return static_cast<double>(bytes) / duration<double>(d).count() / 1e9;
    };
    nanoseconds first_copy{}, best_copy = nanoseconds::max(), best_total = nanoseconds::max();
    for (int round = 0; round < 3; ++round) {
        const auto t0 = steady_clock::now();
        auto staged = session.stage(source); // one copy into shared memory
        if (!check(staged, "stage")) return 1;
        const auto t1 = steady_clock::now();
        auto sumr = session.call<demo::Checksum>(demo::BlobRange{staged->res_id(), 0, bytes, 0});
        const auto t2 = steady_clock::now();
        if (!check(sumr, "checksum")) return 1;
        if (sumr->checksum != expected) {
            fmt::print("bulk: host checksum MISMATCH\n");
            return 1;
        }
        if (round == 0) {
            first_copy = t1 - t0;
        } else {
            best_copy = std::min(best_copy, nanoseconds(t1 - t0));
            best_total = std::min(best_total, nanoseconds(t2 - t0));
        }
    }
    fmt::print("bulk {} MiB: copy into shared memory {:.2f} GB/s (first round, fresh blob: {:.2f} "
               "GB/s); copy + host checksum pass {:.2f} GB/s ({:.1f} ms); checksums match\n",
               bulk_mib, gbps(best_copy), gbps(first_copy), gbps(best_total),
               duration<double, std::milli>(best_total).count());

    // 5. Per-command counters kept by the session.
    fmt::print("\n{:<12} {:>8} {:>8} {:>10} {:>10}\n", "command", "calls", "failed", "mean µs",
               "max µs");
    for (const auto& c : session.stats()) {
        std::string name;
        if (c.type != apir::CommandType::forward)
            name = apir::command_type_name(static_cast<int32_t>(c.type));
        else if (const char* n = demo::command_name(c.id))
            name = n;
        else
            name = fmt::format("FORWARD {}", c.id);
        fmt::print("{:<12} {:>8} {:>8} {:>10.2f} {:>10.2f}\n", name, c.calls, c.failures,
                   duration<double, std::micro>(c.mean()).count(),
                   duration<double, std::micro>(c.max).count());
    }
    fmt::print("(the failed Fail and FORWARD 99 calls are the two deliberate ones above)\n");
    return 0;
}
