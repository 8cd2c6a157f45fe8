// The session suite: a whole APIR session, once over every transport of the build.
#include "catch.hpp"
#include "session_helpers.hpp"
#include "test_clock.hpp"

#include <apir/session.hpp>

#include "demo_protocol.hpp"

#include <atomic>
#include <mutex>
#include <thread>
#include <vector>

using namespace std::chrono_literals;
using apir::Errc;
using apir_test::connected;
using apir_test::drop_forward;
using apir_test::open;
using apir_test::quiet;
using apir_test::Session;
using apir_test::Setup;

TEST_CASE("connect: handshake then LOADLIBRARY", "[session]") {
    for (auto& t : apir_test::test_transports()) {
        DYNAMIC_SECTION(t.name) {
            auto s = open(t);
            auto c = s->connect();
            REQUIRE(c);
            CHECK(c->major == apir::protocol_major);
            CHECK(c->minor == apir::protocol_minor);
            REQUIRE(s->host_version());
            auto st = s->stats();
            REQUIRE(st.size() == 2);
            CHECK(st[0].type == apir::CommandType::handshake);
            CHECK(st[1].type == apir::CommandType::load_library);
            CHECK(st[1].calls == 1);
            CHECK(st[1].failures == 0);
        }
    }
}

TEST_CASE("a different major version is an error, a different minor a warning",
          "[session][version]") {
    for (auto& t : apir_test::test_transports()) {
        DYNAMIC_SECTION(t.name) {
            Setup major;
            major.host_major = 1;
            auto s = open(t, major);
            auto c = s->connect();
            REQUIRE_FALSE(c);
            CHECK(c.error() == Errc::version_mismatch);
            CHECK(c.error().category() == apir::Category::version);

            std::vector<std::string> warnings;
            std::mutex mu;
            Setup minor;
            minor.host_minor = 1; // what the reference host reports
            minor.session.logger = apir::Logger(
                [&](apir::LogLevel l, std::string_view m) {
                    std::lock_guard lk(mu);
                    if (l == apir::LogLevel::warn) warnings.emplace_back(m);
                },
                apir::LogLevel::debug);
            auto s2 = open(t, minor);
            auto c2 = s2->connect();
            REQUIRE(c2);
            CHECK(c2->minor == 1);
            REQUIRE(warnings.size() == 1);
            CHECK(warnings[0].find("minor") != std::string::npos);
        }
    }
}

TEST_CASE("every LOADLIBRARY outcome reaches the guest as its named error", "[session][load]") {
    struct Case {
        std::string backend;
        const char* init_result;
        Errc expected;
        uint32_t wire;
    };
    const std::vector<Case> cases{
        {"no-such-library", nullptr, Errc::load_cannot_open, 4},
        {"not-a-library", nullptr, Errc::load_cannot_open, 4},
        {"missing-symbol", nullptr, Errc::load_symbol_missing, 5},
        {"failing", "1", Errc::library_hypercall_init_error, 7},
        {"failing", "2", Errc::library_already_loaded, 8},
        {"failing", "3", Errc::library_config_missing, 9},
        {"failing", "4", Errc::library_cannot_open, 10},
        {"failing", "5", Errc::library_symbol_missing, 11},
        {"failing", "7", Errc::backend_cannot_open_backend_library, 13},
        {"failing", "8", Errc::backend_cannot_open_ggml_library, 14},
        {"failing", "9", Errc::backend_missing_backend_symbols, 15},
        {"failing", "10", Errc::backend_missing_ggml_symbols, 16},
        {"failing", "11", Errc::backend_failed, 17},
        {"failing", "12", Errc::backend_registration_failed, 18},
        {"failing", "13", Errc::backend_already_initialized, 19},
        {"failing", "14", Errc::backend_no_device, 20},
        {"failing", "15", Errc::backend_init_failed, 21},
        {"failing", "40", Errc::backend_init_unknown, 46},
    };
    for (auto& t : apir_test::test_transports()) {
        DYNAMIC_SECTION(t.name) {
            for (auto& c : cases) {
                Setup s;
                s.backend = c.backend;
                if (c.init_result) s.config["test.init_result"] = c.init_result;
                auto session = open(t, s);
                auto r = session->connect();
                INFO(c.backend << " " << (c.init_result ? c.init_result : ""));
                REQUIRE_FALSE(r);
                CHECK(r.error().code() == c.expected);
                CHECK(r.error().wire_code() == c.wire);
                CHECK(r.error().category() == apir::Category::backend);
            }
            // Configuration key missing: the error names the key.
            apir_test::TransportSetup ts;
            ts.host.logger = quiet();
            apir::SessionOptions so;
            so.logger = quiet();
            Session s(t.make(std::move(ts)), so);
            auto r = s.connect();
            REQUIRE_FALSE(r);
            CHECK(r.error() == Errc::load_config_missing);
            CHECK(r.error().message().find("apir.load_library.path") != std::string::npos);
        }
    }
}

TEST_CASE("typed calls return their replies and their errors", "[session][forward]") {
    for (auto& t : apir_test::test_transports()) {
        DYNAMIC_SECTION(t.name) {
            auto s = connected(t);
            auto e = s->call<demo::Echo>(demo::EchoRequest{7, "ping"});
            REQUIRE(e);
            CHECK(e->tag == 7);
            CHECK(e->text == "ping");

            auto a = s->call<demo::Add>(demo::AddRequest{-5, 12});
            REQUIRE(a);
            CHECK(a->sum == 7);

            auto f = s->call<demo::Fail>(demo::FailRequest{42});
            REQUIRE_FALSE(f);
            CHECK(f.error() == Errc::forward_backend_error);
            CHECK(f.error().wire_code() == 4 + 42);

            auto u = s->call<apir::Forward<200, apir::Empty>>(apir::Empty{});
            REQUIRE_FALSE(u);
            CHECK(u.error() == Errc::forward_invalid_index);

            auto big = s->call<demo::Big>(demo::BigReplyRequest{apir::reply_page_size});
            REQUIRE_FALSE(big);
            CHECK(big.error().wire_code() == 4 + demo::error_reply_overflow);
            auto fits = s->call<demo::Big>(demo::BigReplyRequest{1000});
            REQUIRE(fits);
            CHECK(fits->data.size() == 1000);

            std::chrono::nanoseconds took{-1};
            apir::CallOptions co;
            co.duration = &took;
            REQUIRE(s->call<demo::Add>(demo::AddRequest{1, 1}, co));
            CHECK(took.count() > 0);

            bool found = false;
            for (auto& st : s->stats())
                if (st.type == apir::CommandType::forward && st.id == demo::cmd_fail) {
                    found = true;
                    CHECK(st.calls == 1);
                    CHECK(st.failures == 1);
                }
            CHECK(found);
        }
    }
}

TEST_CASE("FORWARD before LOADLIBRARY fails with NO_DISPATCH", "[session][forward]") {
    for (auto& t : apir_test::test_transports()) {
        DYNAMIC_SECTION(t.name) {
            Setup setup;
            setup.session.load_library = false;
            auto s = connected(t, setup);
            auto r = s->call<demo::Add>(demo::AddRequest{1, 2});
            REQUIRE_FALSE(r);
            CHECK(r.error() == Errc::forward_no_dispatch);
        }
    }
}

TEST_CASE("a request too large for the command buffer is refused before sending", "[session]") {
    for (auto& t : apir_test::test_transports()) {
        DYNAMIC_SECTION(t.name) {
            auto s = connected(t);
            auto r = s->call<demo::Echo>(demo::EchoRequest{1, std::string(5000, 'x')});
            REQUIRE_FALSE(r);
            CHECK(r.error() == Errc::encode_overflow);
            CHECK(r.error().category() == apir::Category::exhausted);
            CHECK(s->call<demo::Echo>(demo::EchoRequest{1, std::string(4000, 'x')}));
        }
    }
}

TEST_CASE("bulk data travels through a reused staging blob", "[session][bulk]") {
    for (auto& t : apir_test::test_transports()) {
        DYNAMIC_SECTION(t.name) {
            auto s = connected(t);
            std::vector<std::byte> data(3 << 20);
            for (int round = 0; round < 3; ++round) {
                demo::fill_pattern(data.data(), data.size(), static_cast<uint64_t>(round));
                auto st = s->stage(data);
                REQUIRE(st);
                auto sum =
                    s->call<demo::Checksum>(demo::BlobRange{st->res_id(), 0, data.size(), 0});
                REQUIRE(sum);
                CHECK(sum->checksum == demo::checksum(data.data(), data.size()));
            }
            CHECK(s->staging_creates() == 1);

            // Host -> guest: the backend fills the blob, the guest reads it in place.
            auto st = s->stage(size_t{1} << 20);
            REQUIRE(st);
            REQUIRE(s->call<demo::Fill>(demo::BlobRange{st->res_id(), 0, st->size(), 99}));
            std::vector<std::byte> expect(st->size());
            demo::fill_pattern(expect.data(), expect.size(), 99);
            CHECK(std::memcmp(st->bytes().data(), expect.data(), expect.size()) == 0);
        }
    }
}

TEST_CASE("deadlines: a slow or silent host times out, and the session recovers",
          "[session][timeout]") {
    for (auto& t : apir_test::test_transports()) {
        DYNAMIC_SECTION(t.name) {
            SECTION("a backend slower than the deadline") {
                auto s = connected(t);
                apir::CallOptions co;
                co.deadline = apir::Deadline::after(20ms);
                auto r = s->call<demo::Sleep>(demo::SleepRequest{200}, co);
                // Inline loopback runs the backend inside submit: the reply is there
                // before the wait starts, so the call succeeds late instead.
                if (t.name != "loopback-inline") {
                    REQUIRE_FALSE(r);
                    CHECK(r.error() == Errc::timeout);
                    CHECK(r.error().category() == apir::Category::timeout);
                }
                auto after = s->call<demo::Add>(demo::AddRequest{2, 2});
                REQUIRE(after);
                CHECK(after->sum == 4);
            }
            // A silent host, on the test clock: the call ends at its deadline exactly.
            SECTION("a host that never answers FORWARD") {
                apir_test::TestClock clock(20us); // a sleep takes 20 µs at most
                Setup setup;
                setup.deliver = drop_forward;
                setup.session.forward_timeout = 1s;
                setup.session.wait.clock = &clock;
                setup.session.wait.max_sleep = 10ms; // DRM polls: 100 sleeps, not 5000
                // The handshake on real time: on test time its deadline passed whenever
                // the host thread took more than the clock's 20 µs to answer (a loaded CPU).
                clock.disarm();
                auto s = connected(t, setup);
                clock.arm();
                const auto start = clock.peek();
                const auto real_start = apir::Clock::now();
                auto r = s->call<demo::Add>(demo::AddRequest{1, 1});
                REQUIRE_FALSE(r);
                CHECK(r.error() == Errc::timeout);
                if (t.name != "loopback-inline") { // its wait does not wait
                    CHECK(clock.peek() - start >= 1s);
                    CHECK(clock.peek() - start < 1s + 1ms);
                }
                CHECK(apir::Clock::now() - real_start < 5s);
            }
            SECTION("a host that never answers the handshake") {
                apir_test::TestClock clock(20us);
                Setup setup;
                setup.deliver = [](std::span<const std::byte>) { return false; };
                setup.session.handshake_timeout = 30ms;
                setup.session.wait.clock = &clock;
                auto s = open(t, setup);
                auto r = s->connect();
                REQUIRE_FALSE(r);
                CHECK(r.error() == Errc::timeout);
            }
        }
    }
}

TEST_CASE("8 threads x 10,000 mixed calls: every reply matches its request", "[session][threads]") {
    constexpr int threads = 8;
    constexpr int calls = 10000;
    for (auto& t : apir_test::test_transports()) {
        DYNAMIC_SECTION(t.name) {
            auto s = connected(t);
            std::atomic<int> bad{0}, ok{0}, failed{0};
            std::vector<std::thread> pool;
            for (int th = 0; th < threads; ++th) {
                pool.emplace_back([&, th] {
                    for (int i = 0; i < calls; ++i) {
                        const uint64_t tag = (uint64_t(th) << 32) | uint32_t(i);
                        switch (i % 3) {
                        case 0: {
                            auto text = std::to_string(tag);
                            auto r = s->call<demo::Echo>(demo::EchoRequest{tag, text});
                            if (!r || r->tag != tag || r->text != text)
                                ++bad;
                            else
                                ++ok;
                            break;
                        }
                        case 1: {
                            auto r = s->call<demo::Add>(demo::AddRequest{th, i});
                            if (!r || r->sum != th + i)
                                ++bad;
                            else
                                ++ok;
                            break;
                        }
                        default: {
                            const uint32_t code = 1 + uint32_t(i % 50);
                            auto r = s->call<demo::Fail>(demo::FailRequest{code});
                            if (r || r.error().wire_code() != 4 + code)
                                ++bad;
                            else
                                ++failed;
                        }
                        }
                    }
                });
            }
            for (auto& p : pool)
                p.join();
            CHECK(bad == 0);
            CHECK(ok + failed == threads * calls);
            uint64_t total = 0;
            for (auto& st : s->stats())
                if (st.type == apir::CommandType::forward) total += st.calls;
            CHECK(total == uint64_t(threads) * calls);
        }
    }
}
