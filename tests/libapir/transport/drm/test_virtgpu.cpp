// VirtgpuTransport on the simulated device: discovery, capset choice, shared memory and
// its cache, submission, and whole sessions with the demo backend.
#include "catch.hpp"
#include "drm_test_util.hpp"

#include "demo_protocol.hpp"

#include <apir/session.hpp>

#include <cerrno>
#include <cstdlib>
#include <thread>

using namespace apir_test;
using apir::CapsetChoice;
using apir::Errc;

namespace {

apir::VirtgpuTransport open_ok(apir::VirtgpuOptions o) {
    auto t = apir::VirtgpuTransport::open(std::move(o));
    if (!t) FAIL(t.error().message());
    return std::move(*t);
}

/// Sets or clears an environment variable for one scope.
class ScopedEnv {
public:
    ScopedEnv(const char* name, const char* value) : name_(name) {
        if (const char* old = std::getenv(name)) old_ = old;
        if (value)
            ::setenv(name, value, 1);
        else
            ::unsetenv(name);
    }
    ~ScopedEnv() {
        if (old_)
            ::setenv(name_, old_->c_str(), 1);
        else
            ::unsetenv(name_);
    }

private:
    const char* name_;
    std::optional<std::string> old_;
};

SimConfig with_capsets(std::vector<uint32_t> ids) {
    SimConfig c;
    c.capsets.clear();
    for (uint32_t id : ids)
        c.capsets.push_back(id == apir::capset_apir
                                ? SimConfig::apir_capset()
                                : SimCapset{id, 0, std::vector<std::byte>(64, std::byte{1})});
    return c;
}

} // namespace

TEST_CASE("capset precedence: option, then the environment, then what the device offers",
          "[virtgpu][capset]") {
    const uint64_t both = (1u << 4) | (1u << 10), venus = 1u << 4;
    CHECK(apir::choose_capset(CapsetChoice::venus, true, both).id == 4);
    CHECK(apir::choose_capset(CapsetChoice::apir, false, venus).id == 10);
    CHECK(apir::choose_capset(CapsetChoice::automatic, true, venus).id == 10);
    CHECK(apir::choose_capset(CapsetChoice::automatic, false, both).id == 10);
    CHECK(apir::choose_capset(CapsetChoice::automatic, false, venus).id == 4);
    CHECK(apir::choose_capset(CapsetChoice::automatic, false, 1u << 2).id == 10);
    CHECK(apir::choose_capset(CapsetChoice::automatic, false, std::nullopt).id == 10);
    CHECK(apir::choose_capset(CapsetChoice::automatic, true, venus).reason ==
          "GGML_REMOTING_USE_APIR_CAPSET is set");
    CHECK(apir::capset_name(10) == "APIR");
    CHECK(apir::capset_name(4) == "VENUS");
    CHECK(apir::capset_name(42) == "capset 42");
}

TEST_CASE("open creates an APIR context on the first usable node", "[virtgpu]") {
    auto dev = make_sim();
    {
        auto t = open_ok(sim_options(dev));
        CHECK(t.name() == "virtgpu");
        CHECK(t.command_type_offset() == 0);
        CHECK(t.capset_id() == 10);
        CHECK(t.device().node.path == "/dev/dri/renderD128");
        CHECK(t.device().driver == "virtio_gpu");
        CHECK(t.device().param(6) == 1u);
        CHECK(t.device().offered_capsets() == std::vector<uint32_t>{2, 4, 10});
        REQUIRE(t.device().capset);
        CHECK(t.device().capset->supports_blob_resources == 1);
        CHECK(dev->contexts_created() == 1);
        CHECK(dev->last_context_capset() == 10);
        CHECK(dev->open_files() == 1);
    }
    CHECK(dev->nothing_alive());
}

TEST_CASE("open skips nodes that fail or do not qualify, never stopping at the first",
          "[virtgpu]") {
    SimConfig c;
    c.nodes = {SimNode{"/dev/dri/renderD128", "i915", 1, 0, "pci 0000:00:02.0 [8086:46a6]"},
               SimNode{"/dev/dri/renderD129", "virtio_gpu", 0, EACCES, ""},
               SimNode{"/dev/dri/renderD130", "virtio_gpu", 2, 0, ""}, // major must be 0
               SimNode{"/dev/dri/renderD131"}};
    auto dev = make_sim(c);
    {
        auto t = open_ok(sim_options(dev));
        CHECK(t.device().node.path == "/dev/dri/renderD131");
        CHECK(dev->open_files() == 1);
    }
    auto d = apir::discover_virtgpu(sim_options(dev));
    REQUIRE(d.nodes.size() == 4);
    CHECK_FALSE(d.error);
    CHECK(d.usable() == &d.nodes[3]);
    CHECK(d.nodes[0].driver == "i915");
    CHECK(d.nodes[0].error->code() == Errc::no_device);
    CHECK(d.nodes[1].error->sys_errno() == EACCES);
    CHECK(d.nodes[2].error->detail().find("virtio_gpu 2.1.0") != std::string::npos);
    CHECK(d.nodes[3].params.size() == 7);
    CHECK(dev->nothing_alive()); // discovery closes what it opens
}

TEST_CASE("a chosen node is used alone", "[virtgpu]") {
    SimConfig c;
    c.nodes = {SimNode{"/dev/dri/renderD128"}, SimNode{"/dev/dri/renderD129"}};
    auto dev = make_sim(c);
    auto o = sim_options(dev);
    o.node = "/dev/dri/renderD129";
    CHECK(open_ok(o).device().node.path == "/dev/dri/renderD129");
    o.node = "/dev/dri/renderD200";
    auto t = apir::VirtgpuTransport::open(o);
    REQUIRE_FALSE(t);
    CHECK(t.error().code() == Errc::no_device);
    CHECK(t.error().sys_errno() == ENOENT);
    CHECK(dev->nothing_alive());
}

TEST_CASE("Venus transition mode adds 331 to command types", "[virtgpu][capset]") {
    SECTION("chosen by the option") {
        auto dev = make_sim();
        auto t = open_ok(sim_options(dev, CapsetChoice::venus));
        CHECK(t.command_type_offset() == 331);
        CHECK(t.name() == "virtgpu-venus");
        CHECK(dev->last_context_capset() == 4);
    }
    SECTION("the default when the device offers Venus but not APIR") {
        auto dev = make_sim(with_capsets({2, 4}));
        auto t = open_ok(sim_options(dev));
        CHECK(t.capset_id() == 4);
        CHECK(t.device().capset->reason.find("transition") != std::string_view::npos);
    }
}

TEST_CASE("GGML_REMOTING_USE_APIR_CAPSET selects APIR, as ggml reads it", "[virtgpu][capset]") {
    auto dev = make_sim(with_capsets({2, 4}));
    auto o = sim_options(dev);
    o.use_environment = true;
    {
        ScopedEnv env(apir::capset_env_var, "0"); // presence counts, not the value
        auto t = apir::VirtgpuTransport::open(o);
        REQUIRE_FALSE(t);
        CHECK(t.error().code() == Errc::unsupported);
        CHECK(t.error().detail().find("does not offer capset 10") != std::string::npos);
        CHECK(t.error().detail().find("VIRGL2, VENUS") != std::string::npos);

        o.capset = CapsetChoice::venus; // an explicit choice wins over the environment
        CHECK(open_ok(o).capset_id() == 4);
        o.capset = CapsetChoice::automatic;
        o.use_environment = false;
        CHECK(open_ok(o).capset_id() == 4);
    }
    {
        ScopedEnv env(apir::capset_env_var, nullptr);
        o.use_environment = true;
        CHECK(open_ok(o).capset_id() == 4);
    }
    CHECK(dev->nothing_alive());
}

TEST_CASE("create_shmem maps a HOST3D blob rounded to 16 KiB", "[virtgpu][shmem]") {
    auto dev = make_sim();
    {
        auto t = open_ok(sim_options(dev));
        auto a = t.create_shmem(100);
        auto b = t.create_shmem(16385);
        REQUIRE(a);
        REQUIRE(b);
        CHECK(a->size() == 16384);
        CHECK(b->size() == 32768);
        CHECK(a->res_id() != b->res_id());
        CHECK(a->res_id() >= 2);
        std::memset(a->data(), 1, a->size()); // writable
        CHECK(dev->gem_handles() == 2);
        CHECK(dev->mappings() == 2);
        CHECK(t.stats().live_blobs == 2);
        CHECK(t.stats().live_bytes == 49152);

        auto zero = t.create_shmem(0);
        REQUIRE_FALSE(zero);
        CHECK(zero.error().code() == Errc::invalid_argument);
        a->reset();
        b->reset();
        CHECK(dev->gem_handles() == 0); // small blobs are not cached
        CHECK(t.stats().blobs_destroyed == 2);
    }
    CHECK(dev->nothing_alive());
    CHECK(dev->bad_munmaps() == 0);
}

TEST_CASE("repeated bulk transfers reuse one blob", "[virtgpu][shmem]") {
    auto dev = make_sim();
    auto t = open_ok(sim_options(dev));
    for (int i = 0; i < 20; ++i) {
        auto s = t.create_shmem(1 << 20);
        REQUIRE(s);
        std::memset(s->data(), i, s->size());
    }
    auto st = t.stats();
    CHECK(st.blobs_created == 1);
    CHECK(st.blobs_reused == 19);
    CHECK(st.cached_blobs == 1);
    CHECK(st.cached_bytes == (1u << 20));
    CHECK(st.live_blobs == 0);
    CHECK(dev->calls(SimOp::create_blob) == 1);
    CHECK(dev->gem_handles() == 1); // the cached blob

    SECTION("a cached blob serves a request up to twice smaller, not more") {
        auto half = t.create_shmem(512 << 10);
        REQUIRE(half);
        CHECK(t.stats().blobs_reused == 20);
        half->reset();
        auto tiny = t.create_shmem(64 << 10);
        REQUIRE(tiny);
        CHECK(t.stats().blobs_created == 2);
    }
    SECTION("trim_shmem_cache destroys the cached blobs") {
        t.trim_shmem_cache();
        CHECK(t.stats().cached_blobs == 0);
        CHECK(dev->gem_handles() == 0);
        CHECK(dev->mappings() == 0);
    }
}

TEST_CASE("the blob cache stays within its bounds", "[virtgpu][shmem]") {
    auto dev = make_sim();
    auto o = sim_options(dev);
    o.shmem_cache_bytes = 3 << 20;
    o.shmem_cache_blobs = 2;
    auto t = open_ok(o);
    {
        std::vector<apir::Shmem> held;
        for (int i = 0; i < 4; ++i)
            held.push_back(std::move(*t.create_shmem(1 << 20)));
        auto big = t.create_shmem(4 << 20); // larger than the cache: never kept
        REQUIRE(big);
    }
    auto st = t.stats();
    CHECK(st.blobs_created == 5);
    CHECK(st.cached_blobs == 2);
    CHECK(st.cached_bytes == (2u << 20));
    CHECK(st.cache_evictions == 2);
    CHECK(st.blobs_destroyed == 3);
    CHECK(dev->gem_handles() == 2);

    auto off = sim_options(dev);
    off.shmem_cache_bytes = 0;
    auto t2 = open_ok(off);
    for (int i = 0; i < 3; ++i)
        REQUIRE(t2.create_shmem(1 << 20));
    CHECK(t2.stats().blobs_created == 3);
    CHECK(t2.stats().cached_blobs == 0);
}

TEST_CASE("a full host-visible region is retried after emptying the cache", "[virtgpu][shmem]") {
    SimConfig c;
    c.host_visible_bytes = 2 << 20;
    auto dev = make_sim(c);
    auto t = open_ok(sim_options(dev));
    { auto s = t.create_shmem(1 << 20); } // cached
    CHECK(t.stats().cached_blobs == 1);
    auto big = t.create_shmem(1536 << 10); // does not fit beside the cached blob
    REQUIRE(big);
    CHECK(t.stats().cached_blobs == 0);
    CHECK(dev->calls(SimOp::create_blob) == 3);
}

TEST_CASE("submit is EXECBUFFER on ring 0 without fences", "[virtgpu]") {
    auto dev = make_sim();
    auto t = open_ok(sim_options(dev));
    auto page = t.create_shmem(apir::reply_page_size);
    REQUIRE(page);
    uint32_t cmd[5] = {0, 0, page->res_id(), apir::protocol_major, apir::protocol_minor};
    apir::reset_notification(*page);
    REQUIRE(t.submit(std::as_bytes(std::span(cmd)), page->res_id(), apir::Deadline::never()));
    auto code = t.wait_reply(*page, {}, apir::Deadline::after(std::chrono::seconds(5)));
    REQUIRE(code);
    CHECK(*code == apir::handshake_magic);
    CHECK(dev->fenced_submits() == 0);
    CHECK(t.stats().submits == 1);
}

TEST_CASE("the transport moves, also inside AnyTransport", "[virtgpu]") {
    auto dev = make_sim();
    auto t = open_ok(sim_options(dev));
    auto page = t.create_shmem(4096);
    REQUIRE(page);
    apir::VirtgpuTransport moved = std::move(t);
    apir::AnyTransport any(std::move(moved));
    apir::AnyTransport any2 = std::move(any);
    CHECK(any2.name() == "virtgpu");
    page->reset(); // its owner survived the moves
    CHECK(dev->gem_handles() == 0);
}

TEST_CASE("a whole session runs over the simulated device", "[virtgpu][session]") {
    if (!have_demo_backend()) {
        WARN("the demo backend is not built");
        return;
    }
    for (auto capset : {CapsetChoice::apir, CapsetChoice::venus}) {
        SimConfig c;
        c.host = demo_host();
        auto dev = make_sim(c);
        {
            apir::SessionOptions so;
            so.forward_timeout = std::chrono::seconds(10);
            so.logger = quiet_logger();
            apir::Session s(open_ok(sim_options(dev, capset)), so);
            auto hs = s.connect();
            REQUIRE(hs);
            CHECK(hs->major == apir::protocol_major);

            auto echo = s.call<demo::Echo>(demo::EchoRequest{7, "over virtio-gpu"});
            REQUIRE(echo);
            CHECK(echo->tag == 7);
            CHECK(echo->text == "over virtio-gpu");
            auto sum = s.call<demo::Add>(demo::AddRequest{40, 2});
            REQUIRE(sum);
            CHECK(sum->sum == 42);

            // Bulk data through a staged blob, both directions.
            const size_t n = size_t{8} << 20;
            for (uint64_t seed = 1; seed <= 3; ++seed) {
                auto st = s.stage(n);
                REQUIRE(st);
                demo::fill_pattern(st->bytes().data(), n, seed);
                const uint64_t want = demo::checksum(st->bytes().data(), n);
                auto sumr = s.call<demo::Checksum>(demo::BlobRange{st->res_id(), 0, n, 0});
                REQUIRE(sumr);
                CHECK(sumr->checksum == want);
                REQUIRE(s.call<demo::Fill>(demo::BlobRange{st->res_id(), 0, n, seed + 10}));
                std::vector<std::byte> expect(n);
                demo::fill_pattern(expect.data(), n, seed + 10);
                CHECK(std::memcmp(expect.data(), st->bytes().data(), n) == 0);
            }
            CHECK(s.staging_creates() == 1);

            auto failed = s.call<demo::Fail>(demo::FailRequest{5});
            REQUIRE_FALSE(failed);
            CHECK(failed.error().code() == Errc::forward_backend_error);
            CHECK(dev->fenced_submits() == 0);
        }
        CHECK(dev->nothing_alive());
        CHECK(dev->bad_munmaps() == 0);
    }
}

TEST_CASE("concurrent calls over the simulated device do not cross replies", "[virtgpu][session]") {
    if (!have_demo_backend()) {
        WARN("the demo backend is not built");
        return;
    }
    SimConfig c;
    c.host = demo_host();
    auto dev = make_sim(c);
    apir::SessionOptions so;
    so.forward_timeout = std::chrono::seconds(20);
    so.logger = quiet_logger();
    apir::Session s(open_ok(sim_options(dev)), so);
    REQUIRE(s.connect());
    std::atomic<int> bad{0};
    std::vector<std::thread> threads;
    for (int th = 0; th < 8; ++th)
        threads.emplace_back([&, th] {
            for (uint64_t i = 0; i < 200; ++i) {
                const uint64_t tag = uint64_t(th) << 32 | i;
                auto r = s.call<demo::Echo>(demo::EchoRequest{tag, std::to_string(tag)});
                if (!r || r->tag != tag || r->text != std::to_string(tag)) ++bad;
            }
        });
    for (auto& t : threads)
        t.join();
    CHECK(bad == 0);
    CHECK(s.transport().stats().live_blobs <= 8);
}

TEST_CASE("discovery on the simulated device reports parameters and the capset", "[virtgpu]") {
    SimConfig c;
    c.has_context_init = false;
    auto dev = make_sim(c);
    auto d = apir::discover_virtgpu(sim_options(dev));
    REQUIRE(d.nodes.size() == 1);
    REQUIRE(d.error);
    CHECK(d.error->code() == Errc::unsupported);
    CHECK(d.nodes[0].missing == std::vector<std::string_view>{"CONTEXT_INIT"});
    CHECK(d.nodes[0].param(1) == 1u);
    CHECK(d.nodes[0].param(6) == 0u);
    CHECK(d.error->detail().find("/dev/dri/renderD128: the virtio-gpu device lacks CONTEXT_INIT") !=
          std::string::npos);
    CHECK(dev->nothing_alive());
}
