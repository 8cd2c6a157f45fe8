// Hostile and broken peers, seen from each side (the rows of RELIABILITY.md that are
// not proven elsewhere): a host that sends malformed replies and unexpected codes, a
// late reply racing the next call, a backend that returns every error level or lies
// about where its reply ends, and a command larger than the host accepts.
#include "catch.hpp"
#include "test_transports.hpp"

#include <apir/loopback.hpp>
#include <apir/session.hpp>

#include "demo_protocol.hpp"

#include <array>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

using namespace std::chrono_literals;
using apir::Errc;

namespace {

/// A host played by the test: the next reply (notification word and payload bytes) is
/// whatever the test wrote into `word` and `payload`; a word of 0 is a silent host.
class ScriptedHost final : apir::ShmemOwner {
public:
    uint32_t word = 0;
    std::vector<std::byte> payload;
    uint64_t submits = 0;

    ScriptedHost() = default;
    // The blobs' link names this object: it stays where it was made (tests borrow it).
    ScriptedHost(const ScriptedHost&) = delete;
    ScriptedHost& operator=(const ScriptedHost&) = delete;

    apir::Expected<apir::Shmem> create_shmem(size_t n) {
        const size_t rounded = (n + apir::shmem_alignment - 1) & ~(apir::shmem_alignment - 1);
        const uint32_t id = next_id_++;
        auto& m = blobs_[id];
        m.assign(rounded, std::byte{0});
        return apir::Shmem(shmem_link, id, m);
    }
    apir::Expected<void> submit(std::span<const std::byte>, uint32_t, apir::Deadline) {
        ++submits;
        return {};
    }
    apir::Expected<uint32_t> wait_reply(const apir::Shmem& page, const apir::WaitPolicy& w,
                                        apir::Deadline) {
        auto bytes = page.bytes();
        const size_t n = std::min(payload.size(), bytes.size() - apir::reply_header_size);
        if (n) std::memcpy(bytes.data() + apir::reply_header_size, payload.data(), n);
        apir::notification_word(bytes).store(word, std::memory_order_release);
        return apir::wait_for_reply(bytes, w, apir::Deadline::after(1ms));
    }
    int32_t command_type_offset() const { return 0; }
    std::string_view name() const { return "scripted"; }
    size_t live() const { return blobs_.size(); }

    /// The reply: return code `code`, then the payload encoded from `values`.
    template <class... T>
    void reply(uint32_t code, const T&... values) {
        word = code + 1;
        payload.assign(1024, std::byte{0});
        apir::Encoder e(payload);
        e.put_all(values...);
        REQUIRE(e.ok());
    }
    /// The reply: return code `code`, then these raw payload bytes.
    void reply_raw(uint32_t code, std::vector<std::byte> bytes) {
        word = code + 1;
        payload = std::move(bytes);
    }

private:
    void release_shmem(uint32_t id) noexcept override { blobs_.erase(id); }
    std::shared_ptr<apir::ShmemLink> shmem_link = apir::ShmemLink::make(*this);
    std::map<uint32_t, std::vector<std::byte>> blobs_;
    uint32_t next_id_ = 2;
};

struct Borrowed {
    ScriptedHost* h;
    apir::Expected<apir::Shmem> create_shmem(size_t n) { return h->create_shmem(n); }
    apir::Expected<void> submit(std::span<const std::byte> c, uint32_t r, apir::Deadline d) {
        return h->submit(c, r, d);
    }
    apir::Expected<uint32_t> wait_reply(const apir::Shmem& p, const apir::WaitPolicy& w,
                                        apir::Deadline d) {
        return h->wait_reply(p, w, d);
    }
    int32_t command_type_offset() const { return 0; }
    std::string_view name() const { return "scripted"; }
};

apir::SessionOptions quiet() {
    apir::SessionOptions so;
    so.logger = apir::Logger(nullptr);
    return so;
}

std::vector<std::byte> raw(std::initializer_list<uint64_t> u64s) {
    std::vector<std::byte> b(u64s.size() * 8);
    size_t i = 0;
    for (uint64_t v : u64s) {
        std::memcpy(b.data() + i, &v, 8);
        i += 8;
    }
    return b;
}

struct OptionalReply {
    std::optional<uint64_t> v;
    static constexpr auto wire_fields = apir::fields(&OptionalReply::v);
};
using AskOptional = apir::Forward<0, apir::Empty, OptionalReply>;

// The misbehaving backend's command 4 answers with the request's bytes (a reply as
// long as the request); its command 0 with a code of 0 answers success and writes no
// reply at all.
struct Triple {
    uint64_t a = 0;
    uint32_t b = 0;
    uint32_t c = 0;
    static constexpr auto wire_fields = apir::fields(&Triple::a, &Triple::b, &Triple::c);
};
struct Single {
    uint64_t a = 0;
    static constexpr auto wire_fields = apir::fields(&Single::a);
};
struct Text {
    std::string text;
    static constexpr auto wire_fields = apir::fields(&Text::text);
};
struct Flag {
    bool on = false;
    static constexpr auto wire_fields = apir::fields(&Flag::on);
};
template <class Reply>
using Silent = apir::Forward<0, demo::FailRequest, Reply>;
template <class Request, class Reply = Request>
using Mirror = apir::Forward<4, Request, Reply>;

static_assert(apir::detail::reply_extent<Triple>() == 16);
static_assert(apir::detail::reply_extent<Flag>() == 4);
static_assert(apir::detail::reply_extent<OptionalReply>() == 16);
static_assert(apir::detail::reply_extent<std::array<uint8_t, 5>>() == 8);
static_assert(apir::detail::reply_extent<Text>() == apir::detail::unbounded_reply);
static_assert(apir::detail::reply_extent<apir::Empty>() == 0);

/// A session over transport t whose host loads the misbehaving test backend (quietly).
std::unique_ptr<apir::Session<apir::AnyTransport>>
misbehaving_session(const apir_test::TestTransport& t) {
    apir_test::TransportSetup ts;
    ts.host.config[std::string(apir::config_library_path)] = APIR_TEST_BACKEND_MISBEHAVING;
    ts.host.logger = apir::Logger(nullptr);
    return std::make_unique<apir::Session<apir::AnyTransport>>(t.make(std::move(ts)), quiet());
}
} // namespace

TEST_CASE("a reply the host did not write is never decoded from an earlier reply's bytes",
          "[hostile][guest]") {
    for (auto& t : apir_test::test_transports()) {
        DYNAMIC_SECTION(t.name) {
            auto session = misbehaving_session(t);
            auto& s = *session;
            REQUIRE(s.connect());
            auto shows_short = [](const auto& r) {
                INFO((r ? std::string("decoded a value") : r.error().message()));
                REQUIRE_FALSE(r);
                CHECK(r.error() == Errc::decode_overrun);
                CHECK(r.error().message().find("short reply") != std::string::npos);
            };
            // Each silent call follows one whose reply the host wrote in full on the
            // same page; it used to decode that reply's bytes as its own.
            auto full = s.call<Mirror<Triple>>(Triple{7, 8, 9});
            REQUIRE(full);
            CHECK((full->a == 7 && full->b == 8 && full->c == 9));
            shows_short(s.call<Silent<Triple>>(demo::FailRequest{0}));

            auto text = s.call<Mirror<Text>>(Text{"an earlier reply"});
            REQUIRE(text);
            CHECK(text->text == "an earlier reply");
            shows_short(s.call<Silent<Text>>(demo::FailRequest{0}));

            auto on = s.call<Mirror<Flag>>(Flag{true});
            REQUIRE(on);
            CHECK(on->on);
            shows_short(s.call<Silent<Flag>>(demo::FailRequest{0}));

            // The host writes 8 of the reply's 16 bytes: the rest is not taken from
            // the earlier reply either.
            REQUIRE(s.call<Mirror<Triple>>(Triple{1, 2, 3}));
            shows_short(s.call<Mirror<Single, Triple>>(Single{5}));

            // Replies written in full still decode, whatever came before.
            auto again = s.call<Mirror<Triple>>(Triple{4, 5, 6});
            REQUIRE(again);
            CHECK((again->a == 4 && again->b == 5 && again->c == 6));
            auto empty_text = s.call<Mirror<Text>>(Text{""});
            REQUIRE(empty_text);
            CHECK(empty_text->text.empty());
        }
    }
}

TEST_CASE("a hostile host's malformed replies end in named decode errors", "[hostile][guest]") {
    ScriptedHost host;
    auto so = quiet();
    so.max_reply_alloc = 4096;
    {
        apir::Session<Borrowed> s(Borrowed{&host}, so);

        SECTION("a string without its NUL") {
            std::vector<std::byte> b = raw({7, 4});
            for (char c : {'a', 'b', 'c', 'd'})
                b.push_back(static_cast<std::byte>(c));
            host.reply_raw(4, b);
            auto r = s.call<demo::Echo>(demo::EchoRequest{7, "abcd"});
            REQUIRE_FALSE(r);
            CHECK(r.error() == Errc::decode_missing_nul);
        }
        SECTION("a string of size 0") {
            host.reply_raw(4, raw({7, 0}));
            CHECK(s.call<demo::Echo>(demo::EchoRequest{7, ""}).error() == Errc::decode_missing_nul);
        }
        SECTION("a string longer than the reply page") {
            host.reply_raw(4, raw({7, uint64_t{1} << 40}));
            CHECK(s.call<demo::Echo>(demo::EchoRequest{7, "x"}).error() ==
                  Errc::decode_size_too_large);
        }
        SECTION("a size prefix of UINT64_MAX") {
            host.reply_raw(4, raw({7, UINT64_MAX}));
            CHECK(s.call<demo::Echo>(demo::EchoRequest{7, "x"}).error() ==
                  Errc::decode_size_too_large);
        }
        SECTION("a vector count within the page but past the allocation cap") {
            host.reply_raw(4, raw({5000}));
            auto r = s.call<demo::Big>(demo::BigReplyRequest{5000});
            REQUIRE_FALSE(r);
            CHECK(r.error() == Errc::decode_size_too_large);
        }
        SECTION("an optional flag other than 0 or 1") {
            host.reply_raw(4, raw({7, 1}));
            CHECK(s.call<AskOptional>(apir::Empty{}).error() == Errc::decode_bad_value);
        }
        SECTION("a well-formed reply still decodes") {
            host.reply(4, uint64_t{7}, std::string_view("ok"));
            auto r = s.call<demo::Echo>(demo::EchoRequest{7, "ok"});
            REQUIRE(r);
            CHECK(r->text == "ok");
        }
    }
    CHECK(host.live() == 0);
}

TEST_CASE("unexpected return codes end in named errors carrying the code", "[hostile][guest]") {
    ScriptedHost host;
    apir::Session<Borrowed> s(Borrowed{&host}, quiet());

    SECTION("HANDSHAKE without the magic") {
        for (uint32_t code : {0u, 1u, apir::handshake_magic - 1, 0xfffffffeu}) {
            host.reply(code, uint32_t{0}, uint32_t{2});
            auto r = s.connect();
            REQUIRE_FALSE(r);
            CHECK(r.error() == Errc::handshake_failed);
            CHECK(r.error().wire_code() == code);
        }
    }
    SECTION("HANDSHAKE from a host of another major version") {
        host.reply(apir::handshake_magic, uint32_t{7}, uint32_t{0});
        CHECK(s.connect().error() == Errc::version_mismatch);
    }
    SECTION("LOADLIBRARY and FORWARD codes no host sends") {
        host.reply(0xfffffffeu);
        auto l = s.call<apir::LoadLibrary>(apir::Empty{});
        REQUIRE_FALSE(l);
        CHECK(l.error().category() == apir::Category::backend);
        CHECK(l.error().wire_code() == 0xfffffffeu);
        for (uint32_t code : {1u, 2u, 3u, 4u + apir::forward_invalid_index, 0xfffffffeu}) {
            host.reply(code);
            auto f = s.call<demo::Fail>(demo::FailRequest{1});
            REQUIRE_FALSE(f);
            CHECK(f.error().name() != "UNKNOWN_ERROR");
            CHECK(f.error().wire_code() == code);
        }
    }
    SECTION("a host that stays silent: TIMEOUT, and the page is set aside") {
        host.word = 0;
        apir::CallOptions co;
        co.deadline = apir::Deadline::after(1ms);
        CHECK(s.call<demo::Add>(demo::AddRequest{1, 2}, co).error() == Errc::timeout);
        host.reply(4, int64_t{3});
        auto r = s.call<demo::Add>(demo::AddRequest{1, 2});
        REQUIRE(r);
        CHECK(r->sum == 3);
    }
}

TEST_CASE("a late reply never reaches the next caller", "[hostile][guest]") {
    apir::LoopbackOptions o;
    o.host.config[std::string(apir::config_library_path)] = apir_test::backend_path("demo");
    o.host.logger = apir::Logger(nullptr);
    apir::Session s(apir::LoopbackTransport(std::move(o)), quiet());
    REQUIRE(s.connect());
    apir::CallOptions co;
    co.deadline = apir::Deadline::after(5ms);
    for (uint64_t round = 0; round < 5; ++round) {
        // The host answers the sleep after the caller has given up; the calls made
        // meanwhile and afterwards each get their own reply.
        CHECK(s.call<demo::Sleep>(demo::SleepRequest{30}, co).error() == Errc::timeout);
        for (uint64_t i = 0; i < 20; ++i) {
            const uint64_t tag = round * 100 + i;
            auto r = s.call<demo::Echo>(demo::EchoRequest{tag, std::to_string(tag)});
            REQUIRE(r);
            CHECK(r->tag == tag);
            CHECK(r->text == std::to_string(tag));
            std::this_thread::sleep_for(2ms);
        }
    }
    // Pages whose late reply arrived were taken back: the pool did not grow per round.
    CHECK(s.transport().shmem_count() <= 3);
}

TEST_CASE("a backend's every FORWARD result reaches the guest as its named error",
          "[hostile][backend]") {
    for (auto& t : apir_test::test_transports()) {
        DYNAMIC_SECTION(t.name) {
            auto session = misbehaving_session(t);
            auto& s = *session;
            REQUIRE(s.connect());
            using Result = apir::Forward<0, demo::FailRequest>;
            CHECK(s.call<Result>(demo::FailRequest{0}));
            struct Case {
                uint32_t ret;
                Errc code;
                uint32_t wire;
            };
            for (auto c : {Case{1, Errc::forward_backend_error, 5},
                           Case{apir::forward_invalid_index, Errc::forward_invalid_index, 10},
                           Case{1000, Errc::forward_backend_error, 1004},
                           // Clamped so that the notification word stays non-zero.
                           Case{0xffffffffu, Errc::forward_backend_error, 0xfffffffeu}}) {
                auto r = s.call<Result>(demo::FailRequest{c.ret});
                INFO("backend returned " << c.ret);
                REQUIRE_FALSE(r);
                CHECK(r.error() == c.code);
                CHECK(r.error().wire_code() == c.wire);
            }
        }
    }
}

TEST_CASE("a backend that reports its reply end outside the region is counted; the guest "
          "reads only its page",
          "[hostile][backend]") {
    apir::LoopbackOptions o;
    o.mode = apir::LoopbackOptions::Mode::inline_host;
    o.host.config[std::string(apir::config_library_path)] = APIR_TEST_BACKEND_MISBEHAVING;
    o.host.logger = apir::Logger(nullptr);
    apir::Session s(apir::LoopbackTransport(std::move(o)), quiet());
    REQUIRE(s.connect());
    CHECK(s.call<apir::Forward<1, apir::Empty>>(apir::Empty{}));
    CHECK(s.call<apir::Forward<2, apir::Empty>>(apir::Empty{}));
    CHECK(s.transport().host().stats().bad_reply_end == 2);
    // A reply filling the page to its last byte: its first field claims 0x5a5a...
    // bytes, and decoding stops at the page.
    auto full = s.call<apir::Forward<3, apir::Empty, demo::BigReply>>(apir::Empty{});
    REQUIRE_FALSE(full);
    CHECK(full.error() == Errc::decode_size_too_large);
    CHECK(s.transport().host().stats().bad_reply_end == 2);
}

TEST_CASE("a command larger than the host's cap is dropped unread", "[hostile][host]") {
    apir::LoopbackOptions o;
    o.mode = apir::LoopbackOptions::Mode::inline_host;
    o.host.config[std::string(apir::config_library_path)] = apir_test::backend_path("demo");
    o.host.logger = apir::Logger(nullptr);
    o.host.max_command_size = 256;
    apir::Session s(apir::LoopbackTransport(std::move(o)), quiet());
    REQUIRE(s.connect());
    CHECK(s.call<demo::Echo>(demo::EchoRequest{1, std::string(200, 'x')}));
    auto r = s.call<demo::Echo>(demo::EchoRequest{2, std::string(300, 'x')});
    REQUIRE_FALSE(r);
    CHECK(r.error() == Errc::timeout); // no reply, as for every dropped command
    CHECK(s.transport().host().stats().rejected == 1);
    CHECK(s.call<demo::Echo>(demo::EchoRequest{3, "after"}));
}

TEST_CASE("a request the backend cannot decode comes back as the backend's own error",
          "[hostile][host]") {
    for (auto& t : apir_test::test_transports()) {
        DYNAMIC_SECTION(t.name) {
            apir_test::TransportSetup ts;
            ts.host.config[std::string(apir::config_library_path)] =
                apir_test::backend_path("demo");
            ts.host.logger = apir::Logger(nullptr);
            apir::Session s(t.make(std::move(ts)), quiet());
            REQUIRE(s.connect());
            // Echo with no payload at all, and with a string lacking its NUL.
            auto empty = s.call<apir::Forward<demo::cmd_echo, apir::Empty>>(apir::Empty{});
            REQUIRE_FALSE(empty);
            CHECK(empty.error().wire_code() == 4 + demo::error_bad_request);
            using RawEcho = apir::Forward<demo::cmd_echo, std::array<uint32_t, 5>>;
            auto no_nul = s.call<RawEcho>(std::array<uint32_t, 5>{7, 0, 4, 0, 0x64636261});
            REQUIRE_FALSE(no_nul);
            CHECK(no_nul.error().wire_code() == 4 + demo::error_bad_request);
            CHECK(s.call<demo::Echo>(demo::EchoRequest{7, "abcd"}));
        }
    }
}
