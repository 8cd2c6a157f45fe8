// apir-call-cost: makes N typed calls with the host inline (no thread, no wait), for an
// instruction count per call under valgrind (BENCHMARKS.md, "Instructions per call"):
//
//     valgrind --tool=callgrind --callgrind-out-file=/dev/null apir-call-cost add 1000
//     valgrind --tool=callgrind --callgrind-out-file=/dev/null apir-call-cost add 11000
//
// The difference of the two totals over 10,000 is the cost of one call: the session's
// encode, channel, submit, the host's decode and dispatch, the backend, the reply's
// decode. Kinds: nop (empty FORWARD), add (16-byte request, 8-byte reply), big (a
// 4000-byte request). Exit 1 when a call fails.
#include "bench_protocol.hpp"

#include <apir/apir.hpp>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#ifndef APIR_BENCH_BACKEND_PATH
#error "APIR_BENCH_BACKEND_PATH names the bench backend library"
#endif

namespace {

/// A 4000-byte request of fixed size (no length prefix), as apir-bench's inline line.
struct BigRequest {
    std::array<uint8_t, 4000> bytes{};
    static constexpr auto wire_fields = apir::fields(&BigRequest::bytes);
};
using BigNop = apir::Forward<bench::cmd_nop, BigRequest>;

int usage() {
    std::fprintf(stderr, "usage: apir-call-cost nop|add|big CALLS\n");
    return 2;
}

} // namespace

int main(int argc, char** argv) {
    if (argc != 3) return usage();
    const std::string_view kind = argv[1];
    const long calls = std::strtol(argv[2], nullptr, 10);
    if (calls <= 0 || (kind != "nop" && kind != "add" && kind != "big")) return usage();

    apir::LoopbackOptions lo;
    lo.mode = apir::LoopbackOptions::Mode::inline_host;
    lo.host.config[std::string(apir::config_library_path)] = APIR_BENCH_BACKEND_PATH;
    apir::Session<apir::LoopbackTransport> s(apir::LoopbackTransport(std::move(lo)));
    if (auto c = s.connect(); !c) {
        std::fprintf(stderr, "apir-call-cost: connect: %s\n", c.error().message().c_str());
        return 1;
    }
    BigRequest big;
    big.bytes.fill(7);
    uint64_t sum = 0;
    for (long i = 0; i < calls; ++i) {
        bool ok = false;
        if (kind == "nop") {
            ok = s.call<bench::Nop>(apir::Empty{}).has_value();
        } else if (kind == "add") {
            auto r = s.call<bench::Add>(bench::AddRequest{uint64_t(i), 1});
            ok = r && r->sum == uint64_t(i) + 1;
            if (r) sum += r->sum;
        } else {
            ok = s.call<BigNop>(big).has_value();
        }
        if (!ok) {
            std::fprintf(stderr, "apir-call-cost: call %ld failed\n", i);
            return 1;
        }
    }
    std::printf("%ld %.*s calls (checksum %llu)\n", calls, int(kind.size()), kind.data(),
                static_cast<unsigned long long>(sum));
    return 0;
}
