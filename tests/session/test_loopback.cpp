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
#include <thread>

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
    o.test_hooks.deliver = [&](std::span<const std::byte>) { return !drop.load(); };
    apir::Session s(apir::LoopbackTransport(std::move(o)), quiet_session());
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
    CHECK(link.load_library_failure().empty());
    auto page = link.create_shmem(4096);
    REQUIRE(page);
    std::array<std::byte, 64> buf{};
    apir::Encoder enc(buf);
    enc.put(apir::CommandHeader{2, 1234, page->res_id()});
    apir::reset_notification(*page);
    const auto deadline = apir::Deadline::after(5s);
    REQUIRE(link.submit(enc.written(), deadline));
    auto code = link.wait_reply(*page, apir::WaitPolicy{}, deadline);
    REQUIRE(code);
    CHECK(*code == 1234);
}

TEST_CASE("a loopback link without a peer fails with DISCONNECTED", "[loopback]") {
    apir::LoopbackLink link(
        [](apir::HostMemory&) { return std::unique_ptr<apir::LoopbackPeer>(); });
    CHECK(link.peer() == nullptr);
    std::array<std::byte, 12> cmd{};
    auto r = link.submit(cmd, apir::Deadline::after(1s));
    REQUIRE_FALSE(r);
    CHECK(r.error().code() == Errc::disconnected);
}
