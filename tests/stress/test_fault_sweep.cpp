// Fault sweep over the DRM transport on the simulated device: a whole session (open,
// connect, small calls, bulk both ways, a large blob, teardown) runs once cleanly to
// count how often each system call happens, then once per (call, occurrence, errno)
// with that one call failing. Every step must end in a value or a named error, and
// after the transport is gone nothing may stay open or mapped, except the mapping
// whose munmap itself was made to fail.
#include "catch.hpp"

#include "drm_test_util.hpp"

#include <apir/session.hpp>

#include "demo_protocol.hpp"

#include <fmt/ranges.h>

#include <cerrno>
#include <set>
#include <string>
#include <vector>

using apir_test::SimDevice;
using apir_test::SimOp;

namespace {

constexpr const char* op_names[] = {
    "enumerate",   "open", "close",     "version",    "getparam", "get_caps", "context_init",
    "create_blob", "map",  "gem_close", "execbuffer", "mmap",     "munmap"};
static_assert(std::size(op_names) == size_t(SimOp::count_));

struct Outcome {
    uint64_t values = 0;
    std::vector<std::string> errors; // names
    std::vector<std::string> unnamed;
};

template <class T>
void record(Outcome& o, const apir::Expected<T>& r) {
    if (r) {
        ++o.values;
        return;
    }
    const auto& e = r.error();
    if (e.code() >= apir::Errc::count_ || e.name() == "UNKNOWN_ERROR")
        o.unnamed.push_back(e.message());
    else
        o.errors.emplace_back(e.name());
}

Outcome whole_session(const std::shared_ptr<SimDevice>& dev) {
    Outcome o;
    auto t = apir::VirtgpuTransport::open(apir_test::sim_options(dev, apir::CapsetChoice::apir));
    record(o, t);
    if (!t) return o;
    apir::SessionOptions so;
    so.handshake_timeout = std::chrono::milliseconds(500);
    so.load_library_timeout = std::chrono::milliseconds(500);
    so.forward_timeout = std::chrono::milliseconds(500);
    so.logger = apir_test::quiet_logger();
    apir::Session s(std::move(*t), so);
    record(o, s.connect());
    record(o, s.call<demo::Echo>(demo::EchoRequest{1, "sweep"}));
    record(o, s.call<demo::Add>(demo::AddRequest{2, 3}));
    {
        std::vector<std::byte> data(256 * 1024);
        demo::fill_pattern(data.data(), data.size(), 9);
        auto st = s.stage(data);
        record(o, st);
        if (st) {
            record(o, s.call<demo::Checksum>(demo::BlobRange{st->res_id(), 0, data.size(), 0}));
            record(o, s.call<demo::Fill>(demo::BlobRange{st->res_id(), 0, data.size(), 3}));
        }
    }
    {
        auto big = s.transport().create_shmem(size_t{2} << 20);
        record(o, big);
    }
    s.transport().trim_shmem_cache();
    record(o, s.call<demo::Add>(demo::AddRequest{4, 5}));
    return o;
}

apir_test::SimConfig demo_config() {
    apir_test::SimConfig c;
    c.host = apir_test::demo_host();
    return c;
}

} // namespace

TEST_CASE("every system call of the DRM transport failing at every occurrence: named errors, "
          "nothing leaks",
          "[faults][drm]") {
    REQUIRE(apir_test::have_demo_backend());
    std::array<uint64_t, size_t(SimOp::count_)> clean_calls{};
    {
        auto dev = apir_test::make_sim(demo_config());
        auto o = whole_session(dev);
        REQUIRE(o.errors.empty());
        REQUIRE(o.unnamed.empty());
        for (size_t op = 0; op < clean_calls.size(); ++op)
            clean_calls[op] = dev->calls(SimOp(op));
        REQUIRE(dev->nothing_alive());
    }

    uint64_t runs = 0;
    std::array<std::set<std::string>, size_t(SimOp::count_)> seen;
    const size_t fds = apir_test::process_fds();
    for (size_t op = 0; op < clean_calls.size(); ++op) {
        for (unsigned after = 0; after < clean_calls[op]; ++after) {
            for (int err : {EIO, ENOMEM, EINVAL}) {
                auto dev = apir_test::make_sim(demo_config());
                dev->fail(SimOp(op), err, after);
                auto o = whole_session(dev);
                ++runs;
                seen[op].insert(o.errors.begin(), o.errors.end());
                INFO(op_names[op] << " call " << after + 1 << " of " << clean_calls[op]
                                  << " fails with errno " << err);
                for (auto& u : o.unnamed)
                    UNSCOPED_INFO(u);
                CHECK(o.unnamed.empty());
                CHECK(dev->open_files() == 0);
                CHECK(dev->gem_handles() == 0);
                CHECK(dev->bad_munmaps() == 0);
                if (SimOp(op) == SimOp::munmap) {
                    CHECK(dev->mappings() <= 1);
                } else {
                    CHECK(dev->mappings() == 0);
                    CHECK(dev->objects() == 0);
                }
            }
        }
    }
    CHECK(apir_test::process_fds() == fds);
    fmt::print("fault sweep: {} runs, one failing system call each\n", runs);
    for (size_t op = 0; op < seen.size(); ++op)
        fmt::print("  {:<12} {} calls in a clean session; errors seen: {}\n", op_names[op],
                   clean_calls[op], fmt::join(seen[op], ", "));
}
