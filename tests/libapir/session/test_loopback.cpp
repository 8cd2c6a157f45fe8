// What only the loopback transport can show: a host thread that dies, shared-memory
// accounting and limits, the wait policies.
#include "catch.hpp"
#include "session_helpers.hpp"

#include <apir/command.hpp>
#include <apir/loopback.hpp>
#include <apir/reply_page.hpp>
#include <apir/session.hpp>

#include "demo_protocol.hpp"

#include <array>
#include <condition_variable>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

using namespace std::chrono_literals;
using apir::Errc;

using apir_test::quiet_session;

namespace {
apir::LoopbackOptions
options(apir::LoopbackOptions::Mode mode = apir::LoopbackOptions::Mode::threaded) {
    return apir_test::loopback_options(mode);
}
} // namespace

TEST_CASE("a host thread that exits mid-call: the waiting call fails DISCONNECTED", "[loopback]") {
    auto o = options();
    std::atomic<bool> drop{false};
    apir::Session s(apir_test::dropping_loopback(
                        std::move(o), [&](std::span<const std::byte>) { return !drop.load(); }),
                    quiet_session());
    REQUIRE(s.connect());
    drop = true; // the next command is lost; no deadline: only the host's death ends the wait
    std::thread killer([&] {
        std::this_thread::sleep_for(30ms);
        s.transport().stop_host();
    });
    auto r = s.call<demo::Add>(demo::AddRequest{1, 2});
    killer.join();
    REQUIRE_FALSE(r);
    CHECK(r.error() == Errc::disconnected);
    CHECK(r.error().category() == apir::Category::device);

    auto again = s.call<demo::Add>(demo::AddRequest{1, 2});
    REQUIRE_FALSE(again);
    CHECK(again.error() == Errc::disconnected);
}

TEST_CASE("a stopped inline host refuses submissions", "[loopback]") {
    apir::Session s(apir::LoopbackTransport(options(apir::LoopbackOptions::Mode::inline_host)),
                    quiet_session());
    REQUIRE(s.connect());
    s.transport().stop_host();
    auto r = s.call<demo::Add>(demo::AddRequest{1, 2});
    REQUIRE_FALSE(r);
    CHECK(r.error() == Errc::disconnected);
}

TEST_CASE("shared memory is accounted, capped, and returned", "[loopback]") {
    auto o = options();
    o.max_shmem_bytes = 1 << 20;
    apir::LoopbackTransport t(std::move(o));
    CHECK(t.shmem_count() == 0);
    {
        auto a = t.create_shmem(1000);
        REQUIRE(a);
        CHECK(a->size() == apir::shmem_alignment); // rounded to 16 KiB
        CHECK(a->res_id() >= 2);
        CHECK((reinterpret_cast<uintptr_t>(a->data()) & 4095) == 0);
        auto b = t.create_shmem(1 << 20);
        REQUIRE_FALSE(b);
        CHECK(b.error() == Errc::out_of_memory);
        CHECK(b.error().category() == apir::Category::exhausted);
        CHECK(t.shmem_count() == 1);
        auto zero = t.create_shmem(0);
        CHECK(zero.error() == Errc::invalid_argument);
        auto c = t.create_shmem(100);
        REQUIRE(c);
        CHECK(c->res_id() != a->res_id());
        CHECK(t.host().shmem(c->res_id()));
    }
    CHECK(t.shmem_count() == 0);
    CHECK(t.shmem_bytes() == 0);
}

TEST_CASE("staging more than the shared-memory cap fails cleanly", "[loopback]") {
    auto o = options();
    o.max_shmem_bytes = 4 << 20;
    apir::Session s(apir::LoopbackTransport(std::move(o)), quiet_session());
    REQUIRE(s.connect());
    auto st = s.stage(size_t{8} << 20);
    REQUIRE_FALSE(st);
    CHECK(st.error() == Errc::out_of_memory);
    REQUIRE(s.call<demo::Add>(demo::AddRequest{1, 2}));
}

TEST_CASE("channels are reused: steady-state calls create no shared memory", "[loopback]") {
    apir::Session s(apir::LoopbackTransport(options()), quiet_session());
    REQUIRE(s.connect());
    const size_t before = s.transport().shmem_count();
    for (int i = 0; i < 1000; ++i)
        REQUIRE(s.call<demo::Add>(demo::AddRequest{i, i}));
    CHECK(s.transport().shmem_count() == before);
}

TEST_CASE("every wait policy gets the reply", "[loopback][wait]") {
    for (auto policy : {apir::WaitPolicy::adaptive(), apir::WaitPolicy::spin_only(),
                        apir::WaitPolicy::fixed_poll(15us)}) {
        auto so = quiet_session();
        so.wait = policy;
        apir::Session s(apir::LoopbackTransport(options()), so);
        REQUIRE(s.connect());
        for (int i = 0; i < 50; ++i) {
            auto r = s.call<demo::Add>(demo::AddRequest{i, 1});
            REQUIRE(r);
            CHECK(r->sum == i + 1);
        }
        // A slow host: the adaptive policy blocks rather than spinning, and wakes.
        REQUIRE(s.call<demo::Sleep>(demo::SleepRequest{5}));
    }
}

TEST_CASE("wait_for_reply: deadline, liveness and the notification word", "[wait]") {
    alignas(64) std::array<std::byte, 64> page{};
    auto span = std::span<std::byte>(page);
    SECTION("a word already set returns code = word - 1") {
        apir::notify_reply(span, 41, nullptr);
        auto r = apir::wait_for_reply(span, {}, apir::Deadline::never());
        REQUIRE(r);
        CHECK(*r == 41);
    }
    SECTION("a deadline in the past times out") {
        auto r = apir::wait_for_reply(span, {}, apir::Deadline::after(0ms));
        REQUIRE_FALSE(r);
        CHECK(r.error() == Errc::timeout);
    }
    SECTION("a dead host ends the wait") {
        std::atomic<bool> alive{false};
        apir::WaitHooks hooks;
        hooks.host_alive = &alive;
        auto r = apir::wait_for_reply(span, {}, apir::Deadline::never(), hooks);
        REQUIRE_FALSE(r);
        CHECK(r.error() == Errc::disconnected);
    }
    SECTION("a blocked waiter is woken by notify") {
        std::atomic<uint32_t> sleepers{0};
        apir::WaitHooks hooks;
        hooks.sleepers = &sleepers;
        apir::WaitPolicy p;
        p.spin_for = 0ns;
        std::thread host([&] {
            while (sleepers.load() == 0)
                std::this_thread::yield();
            apir::notify_reply(span, 7, &sleepers);
        });
        auto r = apir::wait_for_reply(span, p, apir::Deadline::after(10s), hooks);
        host.join();
        REQUIRE(r);
        CHECK(*r == 7);
    }
    SECTION("a page too small is an invalid argument") {
        auto r = apir::wait_for_reply(span.first(2), {}, apir::Deadline::never());
        CHECK(r.error() == Errc::invalid_argument);
    }
}

TEST_CASE("the sooner of two deadlines; never is the latest", "[wait]") {
    const auto now = apir::Clock::now();
    const auto a = apir::Deadline::at(now), b = apir::Deadline::at(now + 1s);
    CHECK(apir::Deadline::sooner(a, b).time() == now);
    CHECK(apir::Deadline::sooner(b, a).time() == now);
    CHECK(apir::Deadline::sooner(apir::Deadline::never(), b).time() == b.time());
    CHECK(apir::Deadline::sooner(a, apir::Deadline::never()).time() == now);
    CHECK(apir::Deadline::sooner(apir::Deadline::never(), apir::Deadline::never()).is_never());
}

TEST_CASE("a deadline beyond the clock's range means no deadline", "[wait]") {
    CHECK(apir::Deadline::after(std::chrono::nanoseconds::max()).is_never());
    CHECK(apir::Deadline::after(std::chrono::hours(24 * 365 * 1000)).is_never());
    CHECK(apir::Deadline::after(std::chrono::nanoseconds::min()).expired());
    CHECK_FALSE(apir::Deadline::after(1h).expired());
    // "Wait as long as it takes", said with the largest duration: calls get their replies.
    auto so = quiet_session();
    so.forward_timeout = std::chrono::nanoseconds::max();
    apir::Session s(apir::LoopbackTransport(options()), so);
    REQUIRE(s.connect());
    auto r = s.call<demo::Add>(demo::AddRequest{1, 2});
    REQUIRE(r);
    CHECK(r->sum == 3);
}

// The transport layer knows its other end only as a LoopbackPeer: a peer of a test's
// own answers through the link's HostMemory, in both modes.
namespace {
struct FlagsEcho final : apir::LoopbackPeer {
    explicit FlagsEcho(apir::HostMemory& m) : memory(m) {}
    void execute(std::span<const std::byte> command) override {
        apir::Decoder dec(command);
        auto h = dec.get<apir::CommandHeader>();
        if (!h) return;
        auto page = memory.resource(h->reply_res_id);
        if (page.size() < apir::reply_header_size) return;
        memory.notify(page, h->flags); // the reply is the command's flags
    }
    int32_t command_type_offset() const noexcept override { return 5; }
    apir::HostMemory& memory;
};
} // namespace

TEST_CASE("a loopback link serves a peer of its own through HostMemory", "[loopback]") {
    auto mode = GENERATE(apir::LoopbackLinkOptions::Mode::inline_host,
                         apir::LoopbackLinkOptions::Mode::threaded);
    apir::LoopbackLinkOptions o;
    o.mode = mode;
    apir::LoopbackLink link([](apir::HostMemory& m) { return std::make_unique<FlagsEcho>(m); }, o);
    CHECK(link.command_type_offset() == 5);
    CHECK(link.diagnostics() == link.peer()); // the peer's explain(): empty by default
    CHECK(link.diagnostics()->explain(apir::CommandType::load_library, apir::Error()).empty());
    auto page = link.create_shmem(4096);
    REQUIRE(page);
    std::array<std::byte, 64> buf{};
    apir::Encoder enc(buf);
    enc.put(apir::CommandHeader{2, 1234, page->res_id()});
    apir::reset_notification(*page);
    const auto deadline = apir::Deadline::after(5s);
    REQUIRE(link.submit(enc.written(), page->res_id(), deadline));
    auto code = link.wait_reply(*page, apir::WaitPolicy{}, deadline);
    REQUIRE(code);
    CHECK(*code == 1234);
}

TEST_CASE("a loopback link without a peer fails with DISCONNECTED", "[loopback]") {
    apir::LoopbackLink link(
        [](apir::HostMemory&) { return std::unique_ptr<apir::LoopbackPeer>(); });
    CHECK(link.peer() == nullptr);
    std::array<std::byte, 12> cmd{};
    auto r = link.submit(cmd, 0, apir::Deadline::after(1s));
    REQUIRE_FALSE(r);
    CHECK(r.error().code() == Errc::disconnected);
}

// A peer that blocks in every command until its gate opens (never, unless the test
// opens it), as a backend call that does not return.
namespace {
struct Gate {
    std::mutex mu;
    std::condition_variable cv;
    bool open = false;
    std::atomic<int> entered{0};
    std::atomic<int> peers_destroyed{0};
    void release() {
        {
            std::lock_guard lk(mu);
            open = true;
        }
        cv.notify_all();
    }
};
struct StuckPeer final : apir::LoopbackPeer {
    explicit StuckPeer(std::shared_ptr<Gate> g) : gate(std::move(g)) {}
    ~StuckPeer() override { gate->peers_destroyed.fetch_add(1); }
    void execute(std::span<const std::byte>) override {
        gate->entered.fetch_add(1);
        std::unique_lock lk(gate->mu);
        gate->cv.wait(lk, [&] { return gate->open; });
    }
    std::shared_ptr<Gate> gate;
};

// Runs f on a thread of its own; whether it returned within limit.
template <class F>
bool returns_within(std::chrono::milliseconds limit, F f) {
    auto done = std::make_shared<std::atomic<bool>>(false);
    std::thread([f = std::move(f), done]() mutable {
        f();
        done->store(true);
    }).detach();
    const auto end = std::chrono::steady_clock::now() + limit;
    while (!done->load() && std::chrono::steady_clock::now() < end)
        std::this_thread::sleep_for(1ms);
    return done->load();
}
} // namespace

TEST_CASE("a host thread stuck in a command is abandoned, never joined: destroying the link "
          "returns",
          "[loopback]") {
    auto gate = std::make_shared<Gate>();
    std::vector<std::string> logged;
    std::mutex log_mu;
    apir::LoopbackLinkOptions o;
    o.stop_grace = 100ms;
    o.logger = apir::Logger(
        [&](apir::LogLevel, std::string_view m) {
            std::lock_guard lk(log_mu);
            logged.emplace_back(m);
        },
        apir::LogLevel::warn);
    auto link = std::make_unique<apir::LoopbackLink>(
        [gate](apir::HostMemory&) { return std::make_unique<StuckPeer>(gate); }, o);
    auto page = link->create_shmem(4096);
    REQUIRE(page);
    std::array<std::byte, 64> buf{};
    apir::Encoder enc(buf);
    enc.put(apir::CommandHeader{2, 1, page->res_id()});
    apir::reset_notification(*page);
    REQUIRE(link->submit(enc.written(), page->res_id(), apir::Deadline::after(5s)));
    auto r = link->wait_reply(*page, apir::WaitPolicy{}, apir::Deadline::after(50ms));
    REQUIRE_FALSE(r);
    CHECK(r.error() == Errc::timeout);
    while (gate->entered.load() == 0)
        std::this_thread::yield();

    // The Shmem outlives the link: destroying it later must not touch the abandoned state.
    apir::LoopbackLink* raw = link.release();
    const bool returned = returns_within(20s, [raw] { delete raw; });
    if (!returned) gate->release(); // let a joined thread finish, so the test can end
    REQUIRE(returned);
    {
        std::lock_guard lk(log_mu);
        REQUIRE(logged.size() == 1);
        CHECK(logged[0].find("abandoned") != std::string::npos);
    }
    CHECK(gate->peers_destroyed.load() == 0); // the stuck thread still uses it
    page = apir::Shmem();                     // harmless: the link disowned its blobs

    // When the call finally returns, the thread frees what it was kept alive for.
    gate->release();
    const auto end = std::chrono::steady_clock::now() + 20s;
    while (gate->peers_destroyed.load() == 0 && std::chrono::steady_clock::now() < end)
        std::this_thread::sleep_for(1ms);
    CHECK(gate->peers_destroyed.load() == 1);
}

TEST_CASE("stop_host() with a host stuck in a backend call returns after the grace", "[loopback]") {
#if defined(__SANITIZE_THREAD__)
    // The host thread stays asleep in the demo backend (49 days) and is never joined, by
    // design; at exit ThreadSanitizer sees the backend's globals freed after that thread
    // read them, with no join between. The behaviour is checked in the other builds.
    WARN("not run under ThreadSanitizer: it abandons a thread for the rest of the process");
    return;
#endif
    auto o = options();
    o.stop_grace = 100ms;
    o.logger = apir_test::quiet();
    {
        auto so = quiet_session();
        so.forward_timeout = 100ms;
        apir::Session s(apir::LoopbackTransport(std::move(o)), so);
        REQUIRE(s.connect());
        // The demo backend sleeps for 49 days: the call times out at its deadline.
        auto r = s.call<demo::Sleep>(demo::SleepRequest{0xffffffffu});
        REQUIRE_FALSE(r);
        CHECK(r.error().category() == apir::Category::timeout);
        auto* tr = &s.transport();
        REQUIRE(returns_within(20s, [tr] { tr->stop_host(); }));
        CHECK(tr->host_abandoned());
        auto again = s.call<demo::Add>(demo::AddRequest{1, 2});
        REQUIRE_FALSE(again);
        CHECK(again.error() == Errc::disconnected);
        // The session and its transport go now, with the host thread still asleep.
    }
}

TEST_CASE("calls that come and end when their forecasts say, then sooner: every one answered",
          "[loopback][wait][forecast]") {
    apir::Session s(apir::LoopbackTransport(options()), quiet_session());
    REQUIRE(s.connect());
    // Regular 2 ms calls 2 ms apart: the caller's wait learns when Sleep's reply is due
    // and the host thread when the next command comes; both then rest.
    for (int i = 0; i < 12; ++i) {
        REQUIRE(s.call<demo::Sleep>(demo::SleepRequest{2}));
        std::this_thread::sleep_for(2ms);
    }
    bool found = false;
    for (const auto& row : s.stats())
        if (row.type == apir::CommandType::forward && row.id == demo::cmd_sleep) {
            found = true;
            // Each call took 2 ms: the low estimate, counted from the wait's start and
            // lowered a lead at a time by rests that ended late, is of that order.
            CHECK(row.reply_due >= 1ms);
            CHECK(row.reply_due <= 10ms);
            // Whether it rests depends on this machine's wake-ups (not where they are
            // over a quarter of the call, as under a sanitizer on a busy machine); the
            // modelled-clock tests in test_wait.cpp cover the rest itself.
            if (!row.rests)
                WARN("the Sleep forecast does not rest here: the calls below test the plain "
                     "wait");
        }
    REQUIRE(found);
    // Resting waits are timed two ways, blocking on the host's wake-up and watching; a
    // measurement takes four waits each way.
    for (int i = 0; i < 12; ++i) {
        REQUIRE(s.call<demo::Sleep>(demo::SleepRequest{2}));
        std::this_thread::sleep_for(2ms);
    }
    for (const auto& row : s.stats())
        if (row.type == apir::CommandType::forward && row.id == demo::cmd_sleep && row.rests) {
            INFO("blocks: " << row.blocks);
            CHECK(row.rest_measurements >= 1);
        }
    // A command at once (the host thread rests, expecting it 2 ms later: submit wakes
    // it), then a Sleep that ends at once (the caller rests, expecting 2 ms: the host's
    // notify wakes it). Neither waits for its rest to end, nor for a deadline.
    for (int i = 0; i < 3; ++i) {
        std::chrono::nanoseconds took{0};
        apir::CallOptions o;
        o.duration = &took;
        o.deadline = apir::Deadline::after(5s);
        auto r = s.call<demo::Add>(demo::AddRequest{i, 2}, o);
        REQUIRE(r);
        CHECK(r->sum == i + 2);
        CHECK(took < 1s);
        REQUIRE(s.call<demo::Sleep>(demo::SleepRequest{0}, o));
        CHECK(took < 1s);
        std::this_thread::sleep_for(2ms);
        REQUIRE(s.call<demo::Sleep>(demo::SleepRequest{2}));
    }
}
