// Stress: many threads make mixed calls (small, bulk both ways, failing) through one
// session, over every transport of the build; every reply is checked against its
// request, the host executes each command exactly once, and every shared-memory blob
// is returned at the end.
//
// Size: APIR_STRESS_THREADS (default 16) x APIR_STRESS_CALLS calls per thread
// (default 2,000; the figures in RELIABILITY.md come from 100,000).
#include "catch.hpp"
#include "test_transports.hpp"

#include <apir/loopback.hpp>
#include <apir/session.hpp>

#include "demo_protocol.hpp"

#ifdef APIR_STRESS_SIM
#include <apir/sim/sim_device.hpp>
#endif

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <map>
#include <mutex>
#include <thread>
#include <vector>

using namespace std::chrono_literals;
using apir::Errc;

namespace {

size_t env_size(const char* name, size_t fallback) {
    const char* v = std::getenv(name);
    if (!v || !*v) return fallback;
    return static_cast<size_t>(std::strtoull(v, nullptr, 10));
}

/// A Transport that forwards to one it does not own, so that the transport (and what
/// it can count) outlives the session.
template <class T>
struct Borrowed {
    T* t;
    apir::Expected<apir::Shmem> create_shmem(size_t n) { return t->create_shmem(n); }
    apir::Expected<void> submit(std::span<const std::byte> c, uint32_t r, apir::Deadline d) {
        return t->submit(c, r, d);
    }
    apir::Expected<uint32_t> wait_reply(const apir::Shmem& p, const apir::WaitPolicy& w,
                                        apir::Deadline d) {
        return t->wait_reply(p, w, d);
    }
    int32_t command_type_offset() const { return t->command_type_offset(); }
    std::string_view name() const { return t->name(); }
};

/// Counts, on the guest side, the blobs the session holds: whatever the transport,
/// every blob it created must be released by the end.
class Counted final : apir::ShmemOwner {
public:
    explicit Counted(apir::AnyTransport inner) : inner_(std::move(inner)) {}

    apir::Expected<apir::Shmem> create_shmem(size_t n) {
        auto s = inner_.create_shmem(n);
        if (!s) return s;
        std::lock_guard lk(mu_);
        const uint32_t id = s->res_id();
        const auto bytes = s->bytes();
        if (!live_.emplace(id, std::move(*s)).second) ++duplicate_ids_;
        ++created_;
        return apir::Shmem(shmem_link, id, bytes);
    }
    apir::Expected<void> submit(std::span<const std::byte> c, uint32_t r, apir::Deadline d) {
        return inner_.submit(c, r, d);
    }
    apir::Expected<uint32_t> wait_reply(const apir::Shmem& p, const apir::WaitPolicy& w,
                                        apir::Deadline d) {
        const apir::Shmem* inner = nullptr;
        {
            std::lock_guard lk(mu_);
            auto it = live_.find(p.res_id());
            if (it != live_.end()) inner = &it->second;
        }
        if (!inner) return apir::fail(Errc::unknown_resource, "not a blob of this transport");
        return inner_.wait_reply(*inner, w, d);
    }
    int32_t command_type_offset() const { return inner_.command_type_offset(); }
    std::string_view name() const { return inner_.name(); }

    size_t live() const {
        std::lock_guard lk(mu_);
        return live_.size();
    }
    uint64_t created() const {
        std::lock_guard lk(mu_);
        return created_;
    }
    uint64_t duplicate_ids() const {
        std::lock_guard lk(mu_);
        return duplicate_ids_;
    }

private:
    void release_shmem(uint32_t id) noexcept override {
        apir::Shmem inner;
        std::lock_guard lk(mu_);
        auto it = live_.find(id);
        if (it == live_.end()) return;
        inner = std::move(it->second); // released outside the map, under the lock
        live_.erase(it);
    }

    apir::AnyTransport inner_;
    mutable std::mutex mu_;
    std::shared_ptr<apir::ShmemLink> shmem_link = apir::ShmemLink::make(*this);
    std::map<uint32_t, apir::Shmem> live_;
    uint64_t created_ = 0;
    uint64_t duplicate_ids_ = 0;
};

/// One transport to stress, with what it can tell about itself.
struct Target {
    Target(std::string n, apir::AnyTransport t) : name(std::move(n)), transport(std::move(t)) {}
    std::string name;
    apir::AnyTransport transport;
    /// Commands its host executed, where known (-1: unknown).
    std::function<int64_t()> executed = [] { return int64_t{-1}; };
    /// After the session is gone: what is still alive in the transport or device
    /// ("" when nothing). Checked once with the transport alive, once after it.
    std::function<std::string()> leftovers_with_transport = [] { return std::string(); };
    std::function<std::string()> leftovers_after_transport = [] { return std::string(); };
    std::shared_ptr<void> keep; // the transport itself, when the target borrows it
};

apir::HostOptions host_options() {
    apir::HostOptions h;
    h.config[std::string(apir::config_library_path)] = apir_test::backend_path("demo");
    h.logger = apir::Logger(nullptr);
    return h;
}

Target loopback(apir::LoopbackOptions::Mode mode) {
    apir::LoopbackOptions o;
    o.mode = mode;
    o.host = host_options();
    auto lt = std::make_shared<apir::LoopbackTransport>(std::move(o));
    Target t{std::string(lt->name()),
             apir::AnyTransport(Borrowed<apir::LoopbackTransport>{lt.get()})};
    t.executed = [p = lt.get()] { return static_cast<int64_t>(p->host().stats().commands); };
    t.leftovers_with_transport = [p = lt.get()] {
        return p->shmem_count() == 0 ? std::string()
                                     : fmt::format("{} loopback blobs alive", p->shmem_count());
    };
    t.keep = lt;
    return t;
}

#ifdef APIR_STRESS_SIM
Target drm_sim() {
    apir::SimConfig cfg;
    cfg.host = host_options();
    auto dev = std::make_shared<apir::SimDevice>(std::move(cfg));
    apir::VirtgpuOptions o;
    o.device = dev;
    o.capset = apir::CapsetChoice::apir;
    o.use_environment = false;
    o.logger = apir::Logger(nullptr);
    auto opened = apir::VirtgpuTransport::open(o);
    INFO((opened ? std::string() : opened.error().message()));
    REQUIRE(opened);
    auto vt = std::make_shared<apir::VirtgpuTransport>(std::move(*opened));
    Target t{"drm-sim", apir::AnyTransport(Borrowed<apir::VirtgpuTransport>{vt.get()})};
    t.executed = [d = dev.get()] {
        d->drain();
        return static_cast<int64_t>(d->executed_commands());
    };
    t.leftovers_with_transport = [p = vt.get()] {
        auto st = p->stats();
        return st.live_blobs == 0 ? std::string()
                                  : fmt::format("{} virtgpu blobs alive", st.live_blobs);
    };
    t.leftovers_after_transport = [dev] {
        if (dev->nothing_alive()) return std::string();
        return fmt::format("device: {} files, {} GEM handles, {} mappings, {} objects alive",
                           dev->open_files(), dev->gem_handles(), dev->mappings(), dev->objects());
    };
    t.keep = vt;
    return t;
}
#endif

std::vector<Target> targets() {
    std::vector<Target> v;
    v.push_back(loopback(apir::LoopbackOptions::Mode::inline_host));
    v.push_back(loopback(apir::LoopbackOptions::Mode::threaded));
#ifdef APIR_STRESS_SIM
    v.push_back(drm_sim());
#endif
    // Every other transport of the session suite, counted on the guest side only.
    for (auto& tt : apir_test::test_transports()) {
        const bool covered =
            std::any_of(v.begin(), v.end(), [&](const Target& t) { return t.name == tt.name; });
        if (covered) continue;
        apir_test::TransportSetup s;
        s.host = host_options();
        v.push_back(Target{tt.name, tt.make(std::move(s))});
    }
    return v;
}

struct Tally {
    std::atomic<uint64_t> ok{0}, expected_failures{0}, bad{0};
    std::mutex mu;
    std::vector<std::string> first_bad;
    void wrong(std::string what) {
        if (bad.fetch_add(1) < 5) {
            std::lock_guard lk(mu);
            first_bad.push_back(std::move(what));
        }
    }
};

using Session = apir::Session<Borrowed<Counted>>;
constexpr size_t blob_size = 64 * 1024;

// One thread's calls. Tags are unique per (thread, call), so a crossed reply shows.
void worker(Session& s, Tally& tally, uint32_t th, size_t calls) {
    auto blob = s.transport().t->create_shmem(blob_size);
    if (!blob) {
        tally.wrong("create_shmem: " + blob.error().message());
        return;
    }
    std::vector<std::byte> expect(blob_size);
    for (size_t i = 0; i < calls; ++i) {
        const uint64_t tag = (uint64_t{th} << 32) | i;
        auto check = [&](bool good, const char* what) {
            if (good)
                tally.ok.fetch_add(1, std::memory_order_relaxed);
            else
                tally.wrong(fmt::format("thread {} call {}: {}", th, i, what));
        };
        auto check_error = [&](const apir::Error* e, Errc code, uint32_t wire, const char* what) {
            if (e && e->code() == code && e->wire_code() == wire)
                tally.expected_failures.fetch_add(1, std::memory_order_relaxed);
            else
                tally.wrong(fmt::format("thread {} call {}: {}: {}", th, i, what,
                                        e ? e->message() : "succeeded"));
        };
        switch (i % 8) {
        case 0:
        case 1: { // small: echo a string unique to this call
            const std::string text = fmt::format("{:x}-{}", tag, std::string(i % 40, 'e'));
            auto r = s.call<demo::Echo>(demo::EchoRequest{tag, text});
            check(r && r->tag == tag && r->text == text, "echo reply");
            break;
        }
        case 2:
        case 3: { // small: a sum unique to this call
            const auto a = static_cast<int64_t>(tag), b = static_cast<int64_t>(i * 7 + 1);
            auto r = s.call<demo::Add>(demo::AddRequest{a, b});
            check(r && r->sum == a + b, "add reply");
            break;
        }
        case 4: { // bulk, guest to host: the host checksums what this thread wrote
            const size_t n = 1 + (i * 4099) % blob_size;
            demo::fill_pattern(blob->data(), n, tag);
            auto r = s.call<demo::Checksum>(demo::BlobRange{blob->res_id(), 0, n, 0});
            check(r && r->checksum == demo::checksum(blob->data(), n), "checksum reply");
            break;
        }
        case 5: { // bulk, host to guest: the host fills this thread's blob
            const size_t n = 1 + (i * 8191) % blob_size;
            auto r = s.call<demo::Fill>(demo::BlobRange{blob->res_id(), 0, n, tag});
            demo::fill_pattern(expect.data(), n, tag);
            check(r && std::memcmp(blob->data(), expect.data(), n) == 0, "filled blob");
            break;
        }
        case 6: { // failing: the backend's own code comes back
            const uint32_t code = 1 + static_cast<uint32_t>(tag % 100000);
            auto r = s.call<demo::Fail>(demo::FailRequest{code});
            check_error(r ? nullptr : &r.error(), Errc::forward_backend_error, 4 + code, "fail");
            break;
        }
        default: { // failing: a command the backend does not have
            auto r = s.call<apir::Forward<200, apir::Empty>>(apir::Empty{});
            check_error(r ? nullptr : &r.error(), Errc::forward_invalid_index,
                        4 + apir::forward_invalid_index, "invalid index");
        }
        }
    }
}

} // namespace

TEST_CASE("threads x mixed calls: no lost, duplicated or crossed replies, nothing leaks",
          "[stress]") {
    const size_t threads = env_size("APIR_STRESS_THREADS", 16);
    const size_t calls = env_size("APIR_STRESS_CALLS", 2000);
    const uint64_t total = uint64_t{threads} * calls;

    for (auto& target : targets()) {
        DYNAMIC_SECTION(target.name) {
            auto counted = std::make_unique<Counted>(std::move(target.transport));
            const int64_t executed_before = target.executed();
            Tally tally;
            apir::SessionOptions so;
            so.logger = apir::Logger(nullptr);
            so.forward_timeout = 60s; // a lost reply fails the call instead of hanging it
            const auto start = std::chrono::steady_clock::now();
            uint64_t forwards = 0;
            {
                Session s(Borrowed<Counted>{counted.get()}, so);
                auto c = s.connect();
                INFO((c ? std::string("connected") : c.error().message()));
                REQUIRE(c);

                std::vector<std::thread> pool;
                for (size_t th = 0; th < threads; ++th)
                    pool.emplace_back(worker, std::ref(s), std::ref(tally),
                                      static_cast<uint32_t>(th), calls);
                for (auto& p : pool)
                    p.join();

                for (auto& st : s.stats())
                    if (st.type == apir::CommandType::forward) forwards += st.calls;
            }
            const double secs =
                std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
            fmt::print("stress {}: {} threads x {} calls in {:.2f} s ({:.0f} calls/s), "
                       "{} blobs created\n",
                       target.name, threads, calls, secs, static_cast<double>(total) / secs,
                       counted->created());

            for (auto& w : tally.first_bad)
                UNSCOPED_INFO(w);
            CHECK(tally.bad == 0);
            CHECK(tally.ok + tally.expected_failures == total);
            CHECK(forwards == total);
            // Exactly one execution per command: HANDSHAKE, LOADLIBRARY and the calls.
            if (const int64_t executed = target.executed(); executed >= 0)
                CHECK(static_cast<uint64_t>(executed - executed_before) == total + 2);
            CHECK(counted->duplicate_ids() == 0);
            CHECK(counted->live() == 0);
            CHECK(target.leftovers_with_transport() == "");
            counted.reset();
            target.keep.reset();
            CHECK(target.leftovers_after_transport() == "");
        }
    }
}

TEST_CASE("threads x calls with deadlines shorter than the host: late replies never cross",
          "[stress][timeout]") {
    const size_t threads = 8;
    const size_t calls = env_size("APIR_STRESS_CALLS", 2000) / 10 + 20;
    for (auto& target : targets()) {
        DYNAMIC_SECTION(target.name) {
            auto counted = std::make_unique<Counted>(std::move(target.transport));
            Tally tally;
            std::atomic<uint64_t> timeouts{0};
            {
                apir::SessionOptions so;
                so.logger = apir::Logger(nullptr);
                Session s(Borrowed<Counted>{counted.get()}, so);
                REQUIRE(s.connect());
                std::vector<std::thread> pool;
                for (uint32_t th = 0; th < threads; ++th)
                    pool.emplace_back([&, th] {
                        for (size_t i = 0; i < calls; ++i) {
                            const uint64_t tag = (uint64_t{th} << 32) | i;
                            if (i % 4 == 0) {
                                // The host answers after the caller has given up.
                                apir::CallOptions co;
                                co.deadline = apir::Deadline::after(200us);
                                auto r = s.call<demo::Sleep>(demo::SleepRequest{1}, co);
                                if (!r && r.error() == Errc::timeout)
                                    timeouts.fetch_add(1);
                                else if (!r)
                                    tally.wrong(r.error().message());
                                continue;
                            }
                            const std::string text = fmt::format("{:x}", tag);
                            auto r = s.call<demo::Echo>(demo::EchoRequest{tag, text});
                            if (r && r->tag == tag && r->text == text)
                                tally.ok.fetch_add(1);
                            else
                                tally.wrong(fmt::format("thread {} call {}: {}", th, i,
                                                        r ? "crossed reply" : r.error().message()));
                        }
                    });
                for (auto& p : pool)
                    p.join();
            }
            fmt::print("stress {} with deadlines: {} threads x {} calls, {} timed out\n",
                       target.name, threads, calls, timeouts.load());
            for (auto& w : tally.first_bad)
                UNSCOPED_INFO(w);
            CHECK(tally.bad == 0);
            CHECK(counted->live() == 0);
            CHECK(target.leftovers_with_transport() == "");
            counted.reset();
            target.keep.reset();
            CHECK(target.leftovers_after_transport() == "");
        }
    }
}
