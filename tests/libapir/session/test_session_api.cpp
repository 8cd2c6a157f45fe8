// What a user of the Session's API relies on: a stats row per FORWARD id (bounded), the
// host's reason in a failed LOADLIBRARY when the host is in-process, and holding a
// Session through a pointer (it is not movable), and one layout of the public templates
// whatever NDEBUG says (this file without it, session_layout_ndebug.cpp with it).
#undef NDEBUG
#include "catch.hpp"
#include "test_transports.hpp"

#include <apir/ggml/client.hpp>
#include <apir/loopback.hpp>
#include <apir/session.hpp>

#include <memory>
#include <type_traits>

using apir::Errc;

namespace {

// A session over the inline loopback whose host loads `library`, owned as the Session's
// comment says: through a std::unique_ptr.
template <class S = apir::Session<apir::LoopbackTransport>>
std::unique_ptr<S> session_with(std::string library) {
    apir::LoopbackOptions lo;
    lo.mode = apir::LoopbackOptions::Mode::inline_host;
    lo.host.config[std::string(apir::config_library_path)] = std::move(library);
    lo.host.logger = apir::Logger(nullptr);
    apir::SessionOptions so;
    so.logger = apir::Logger(nullptr);
    return std::make_unique<S>(apir::LoopbackTransport(std::move(lo)), std::move(so));
}

template <uint32_t Id>
using Unknown = apir::Forward<Id, apir::Empty>;

// Calls FORWARD ids base, base + 1, ... base + N - 1 once each.
template <uint32_t Base, size_t... I>
void call_each(auto& s, std::index_sequence<I...>) {
    ((void)s.template call<Unknown<Base + static_cast<uint32_t>(I)>>(apir::Empty{}), ...);
}

const apir::CommandStats* row(const std::vector<apir::CommandStats>& rows, uint32_t id) {
    for (const auto& r : rows)
        if (r.type == apir::CommandType::forward && !r.other_ids && r.id == id) return &r;
    return nullptr;
}

} // namespace

TEST_CASE("stats() keeps a row per FORWARD id, also past 255, up to a bound", "[session]") {
    using S = apir::Session<apir::LoopbackTransport>;
    auto owner = session_with(apir_test::backend_path("demo"));
    S& s = *owner;
    REQUIRE(s.connect());
    // The demo backend knows none of these: each call fails, and each is counted.
    (void)s.call<Unknown<300>>(apir::Empty{});
    (void)s.call<Unknown<300>>(apir::Empty{});
    (void)s.call<Unknown<70000>>(apir::Empty{});
    (void)s.call<Unknown<0xffffffffu>>(apir::Empty{});
    auto rows = s.stats();
    const auto* a = row(rows, 300);
    const auto* b = row(rows, 70000);
    const auto* c = row(rows, 0xffffffffu);
    REQUIRE(a);
    REQUIRE(b);
    REQUIRE(c);
    CHECK(a->calls == 2);
    CHECK(a->failures == 2);
    CHECK(b->calls == 1);
    CHECK(c->calls == 1);
    for (const auto& r : rows)
        CHECK_FALSE(r.other_ids);

    // Past max_forward_rows distinct high ids, the rest share one row.
    static_assert(S::max_forward_rows == 64);
    call_each<1000>(s, std::make_index_sequence<64>{});
    rows = s.stats();
    size_t high = 0;
    const apir::CommandStats* other = nullptr;
    for (const auto& r : rows) {
        if (r.other_ids) other = &r;
        if (r.type == apir::CommandType::forward && !r.other_ids && r.id >= 256) ++high;
    }
    CHECK(high == S::max_forward_rows);
    REQUIRE(other);
    // 300, 70000 and 0xffffffff took three rows: 61 of the 64 new ids found one.
    CHECK(other->calls == 3);
    CHECK(row(rows, 1000 + 60));
    CHECK_FALSE(row(rows, 1000 + 61));
}

TEST_CASE("a failed LOADLIBRARY carries the in-process host's reason", "[session]") {
    SECTION("no such file") {
        auto c = session_with("/nonexistent/libnothing.so")->connect();
        REQUIRE_FALSE(c);
        CHECK(c.error().code() == Errc::load_cannot_open);
        CHECK(c.error().wire_code() == 4);
        CHECK_THAT(c.error().detail(),
                   Catch::Contains("'/nonexistent/libnothing.so' does not exist (no such file)"));
    }
    SECTION("dlopen fails, through AnyTransport too") {
        auto s = session_with<apir::Session<apir::AnyTransport>>(
            apir_test::backend_path("not-a-library"));
        auto c = s->connect();
        REQUIRE_FALSE(c);
        CHECK(c.error().code() == Errc::load_cannot_open);
        CHECK_THAT(c.error().message(), Catch::Contains("(dlopen: "));
    }
    SECTION("a missing symbol") {
        auto s = session_with(apir_test::backend_path("missing-symbol"));
        auto c = s->connect();
        REQUIRE_FALSE(c);
        CHECK(c.error().code() == Errc::load_symbol_missing);
        CHECK_THAT(c.error().detail(), Catch::Contains("lacks apir_backend_"));
        CHECK_FALSE(s->transport().host().load_library_failure().empty());
        CHECK_FALSE(s->transport()
                        .diagnostics()
                        ->explain(apir::CommandType::load_library, c.error())
                        .empty());
        // The reason belongs to LOADLIBRARY only.
        CHECK(s->transport().diagnostics()->explain(apir::CommandType::forward, c.error()).empty());
    }
    SECTION("success leaves no reason") {
        auto s = session_with(apir_test::backend_path("demo"));
        REQUIRE(s->connect());
        CHECK(s->transport().host().load_library_failure().empty());
    }
}

TEST_CASE("a Session is held through a pointer, e.g. from a C struct", "[session]") {
    using S = apir::Session<apir::LoopbackTransport>;
    static_assert(!std::is_move_constructible_v<S> && !std::is_copy_constructible_v<S>);
    struct ggml_like_context { // what a ggml backend's C struct holds
        S* session;
    };
    auto owner = session_with(apir_test::backend_path("demo"));
    ggml_like_context ctx{owner.get()};
    REQUIRE(ctx.session->connect());
    CHECK(ctx.session->host_version()->major == apir::protocol_major);
}

std::size_t session_size_with_ndebug();     // session_layout_ndebug.cpp
std::size_t ggml_device_size_with_ndebug(); // session_layout_ndebug.cpp

TEST_CASE("a Session and a ggml Device have one layout with and without NDEBUG") {
    CHECK(sizeof(apir::Session<apir::LoopbackTransport>) == session_size_with_ndebug());
    CHECK(sizeof(apir::ggml::Device<apir::LoopbackTransport>) == ggml_device_size_with_ndebug());
}
