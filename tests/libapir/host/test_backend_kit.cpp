// The backend kit of apir/backend.hpp: the context registry and the dispatch table that
// the project's backends are built on, driven the way a host drives a backend.
#include "catch.hpp"

#include <apir/backend.hpp>

#include <algorithm>
#include <array>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

namespace {

struct State {
    int calls = 0;
};
using Contexts = apir::ContextRegistry<State>;
using Context = Contexts::Context;

constexpr uint32_t overflow_code = 40;
constexpr uint32_t no_context_code = 41;

std::array<std::byte, 64> g_blob{};

const char* config(uint32_t, const char* key) {
    return std::strcmp(key, "k") == 0 ? "v" : nullptr;
}
void* shmem_ptr(uint32_t, uint32_t res_id) {
    return res_id == 7 ? g_blob.data() : nullptr;
}
void* shmem_sized(uint32_t, uint32_t res_id, uint64_t* size) {
    if (res_id != 7) return nullptr;
    *size = g_blob.size();
    return g_blob.data();
}
virgl_apir_callbacks g_callbacks{&config, &shmem_ptr};

uint32_t count(Context& c, apir::BackendFrame& f) {
    f.reply().write_u32(static_cast<uint32_t>(++c.state.calls));
    return 0;
}
uint32_t refuse(Context&, apir::BackendFrame&) {
    return 9;
}
uint32_t too_big(Context&, apir::BackendFrame& f) {
    f.reply().write_bytes(g_blob.data(), g_blob.size()); // more than the 8-byte reply region
    return 0;
}

constexpr auto g_table = [] {
    apir::DispatchTable<Context, 4> t(
        {.reply_overflow = overflow_code, .no_context = no_context_code});
    t.on(0, &count).on(1, &refuse).on(3, &too_big);
    return t;
}();

struct Reply {
    uint32_t result = 0;
    size_t written = 0;
    std::array<char, 8> bytes{};
};

Reply call(Contexts& contexts, uint32_t ctx, uint32_t cmd) {
    Reply r;
    char request[1] = {};
    char* end = nullptr;
    r.result = g_table(contexts, ctx, cmd, request, request, r.bytes.data(),
                       r.bytes.data() + r.bytes.size(), &end);
    r.written = static_cast<size_t>(end - r.bytes.data());
    return r;
}

} // namespace

TEST_CASE("the dispatch table answers each id by its handler, or with a named code") {
    Contexts contexts;
    REQUIRE(contexts.open(5, &g_callbacks) != nullptr);
    SECTION("a handler's reply is finished by the table") {
        Reply r = call(contexts, 5, 0);
        CHECK(r.result == 0);
        CHECK(r.written == 4);
        CHECK(call(contexts, 5, 0).bytes[0] == 2); // the context's state persists
    }
    SECTION("a handler's own result is returned as it is, with an empty reply") {
        Reply r = call(contexts, 5, 1);
        CHECK(r.result == 9);
        CHECK(r.written == 0);
    }
    SECTION("ids without a handler and past the table: FORWARD_INVALID_INDEX") {
        CHECK(call(contexts, 5, 2).result == apir::forward_invalid_index);
        CHECK(call(contexts, 5, 4).result == apir::forward_invalid_index);
        CHECK(call(contexts, 5, 0xffffffffu).result == apir::forward_invalid_index);
    }
    SECTION("a reply larger than its region: the overflow code, nothing reported written") {
        Reply r = call(contexts, 5, 3);
        CHECK(r.result == overflow_code);
        CHECK(r.written == 0);
    }
    SECTION("a context that is not open: the no-context code") {
        CHECK(call(contexts, 6, 0).result == no_context_code);
    }
}

TEST_CASE("the context registry follows initialize, set_shmem_sized and deinit") {
    Contexts contexts;
    SECTION("initialize without the ABI's services fails") {
        virgl_apir_callbacks none{nullptr, nullptr};
        CHECK(contexts.open(1, nullptr) == nullptr);
        CHECK(contexts.open(1, &none) == nullptr);
        CHECK(contexts.find(1) == nullptr);
    }
    SECTION("a context sees its configuration and resolves ranges through the look-ups") {
        Context* c = contexts.open(1, &g_callbacks);
        REQUIRE(c);
        CHECK(std::string(c->config("k")) == "v");
        CHECK(c->config("other") == nullptr);
        // get_shmem_ptr alone: ranges up to the documented unsized limit.
        CHECK(c->resolve(7, 0, 1 << 20).data() == g_blob.data());
        CHECK(c->resolve(8, 0, 1).empty());
        // With the sized look-up, a range is checked against the blob's size.
        contexts.set_shmem_sized(1, &shmem_sized);
        CHECK(c->resolve(7, 60, 4).data() == g_blob.data() + 60);
        CHECK(c->resolve(7, 60, 5).empty());
        CHECK(c->resolve(7, ~uint64_t{0}, 2).empty());
    }
    SECTION("a closed context is not found, and reopening it starts a new state") {
        REQUIRE(contexts.open(1, &g_callbacks));
        call(contexts, 1, 0);
        CHECK(contexts.find(1)->state.calls == 1);
        contexts.close(1);
        CHECK(contexts.find(1) == nullptr);
        CHECK(call(contexts, 1, 0).result == no_context_code);
        REQUIRE(contexts.open(1, &g_callbacks));
        CHECK(call(contexts, 1, 0).bytes[0] == 1);
    }
    SECTION("contexts on other threads open and close while one is dispatched") {
        REQUIRE(contexts.open(1, &g_callbacks));
        std::thread churn([&] {
            for (uint32_t i = 0; i < 2000; ++i) {
                contexts.open(100 + i % 8, &g_callbacks);
                contexts.close(100 + (i + 4) % 8);
            }
        });
        for (int i = 0; i < 2000; ++i)
            REQUIRE(call(contexts, 1, 0).result == 0);
        churn.join();
        CHECK(contexts.find(1)->state.calls == 2000);
    }
}

namespace {
// A state that reads its configuration when its context opens, and refuses context 13.
struct Configured {
    template <class C>
    bool open(C& c) {
        value = c.config("k") ? c.config("k") : "";
        return c.id != 13;
    }
    std::string value;
};
} // namespace

TEST_CASE("a state's open() sees the new context and can refuse it") {
    apir::ContextRegistry<Configured> contexts;
    auto* c = contexts.open(1, &g_callbacks);
    REQUIRE(c);
    CHECK(c->state.value == "v");
    CHECK(contexts.open(13, &g_callbacks) == nullptr);
    CHECK(contexts.find(13) == nullptr);
    CHECK(contexts.find(1) == c);
}

namespace typed {

struct AddRequest {
    int32_t a = 0;
    int32_t b = 0;
    static constexpr auto wire_fields = apir::fields(&AddRequest::a, &AddRequest::b);
};
struct AddReply {
    int64_t sum = 0;
    static constexpr auto wire_fields = apir::fields(&AddReply::sum);
};
struct NameReply {
    std::string name;
    static constexpr auto wire_fields = apir::fields(&NameReply::name);
};
// The guest's view of the calls: the same types bind the handlers below.
using Add = apir::Forward<0, AddRequest, AddReply>;
using Name = apir::Forward<1, apir::Empty, NameReply>;
using Nothing = apir::Forward<2, AddRequest>;

constexpr uint32_t bad_request_code = 42;
constexpr uint32_t negative_code = 43;

apir::Answer<NameReply> name(Context& c, const apir::Empty&) {
    ++c.state.calls;
    return NameReply{"typed"};
}

constexpr auto g_typed = [] {
    apir::DispatchTable<Context, 3> t({.reply_overflow = overflow_code,
                                       .no_context = no_context_code,
                                       .bad_request = bad_request_code});
    t.on<Add>([](Context& c, const AddRequest& r) -> apir::Answer<AddReply> {
         ++c.state.calls;
         if (r.a < 0) return apir::Refusal{negative_code};
         return AddReply{int64_t{r.a} + r.b};
     })
        .on<Name, &name>()
        .on<Nothing>(
            [](Context&, const AddRequest&) -> apir::Answer<apir::Empty> { return apir::Empty{}; });
    return t;
}();

struct Result {
    uint32_t code = 0;
    std::vector<std::byte> reply;
};

template <class Req>
Result call_typed(Contexts& contexts, uint32_t cmd, const Req& req, size_t extra = 0,
                  size_t reply_room = 64) {
    std::vector<std::byte> in(64);
    apir::Encoder e(in);
    e.put(req);
    REQUIRE(e.ok());
    std::vector<char> out(reply_room);
    char* end = nullptr;
    char* dec = reinterpret_cast<char*>(in.data());
    Result r;
    const size_t sent = e.size() - std::min(e.size(), extra); // extra: bytes cut off the end
    r.code = g_typed(contexts, 5, cmd, dec, dec + sent, out.data(), out.data() + out.size(), &end);
    r.reply.assign(reinterpret_cast<std::byte*>(out.data()), reinterpret_cast<std::byte*>(end));
    return r;
}

} // namespace typed

TEST_CASE("a typed handler gets its decoded request and its answer is encoded") {
    using namespace typed;
    Contexts contexts;
    REQUIRE(contexts.open(5, &g_callbacks) != nullptr);
    SECTION("the reply is the call's reply type, as the guest decodes it") {
        Result r = call_typed(contexts, 0, AddRequest{2, 40});
        REQUIRE(r.code == 0);
        apir::Decoder d(r.reply);
        AddReply reply;
        REQUIRE(d.get_into(reply));
        CHECK(reply.sum == 42);
        CHECK(d.remaining() == 0);
        CHECK(contexts.find(5)->state.calls == 1);
    }
    SECTION("a function bound with on<Call, &f>() and a string reply") {
        Result r = call_typed(contexts, 1, apir::Empty{});
        REQUIRE(r.code == 0);
        apir::Decoder d(r.reply);
        NameReply reply;
        REQUIRE(d.get_into(reply));
        CHECK(reply.name == "typed");
    }
    SECTION("an empty reply type writes nothing and succeeds") {
        Result r = call_typed(contexts, 2, AddRequest{1, 1});
        CHECK(r.code == 0);
        CHECK(r.reply.empty());
    }
    SECTION("a refusal returns the handler's code with an empty reply") {
        Result r = call_typed(contexts, 0, AddRequest{-1, 1});
        CHECK(r.code == negative_code);
        CHECK(r.reply.empty());
    }
    SECTION("a request that does not decode: the bad-request code, the handler not run") {
        Result r = call_typed(contexts, 0, AddRequest{1, 2}, /*cut*/ 2);
        CHECK(r.code == bad_request_code);
        CHECK(r.reply.empty());
        CHECK(contexts.find(5)->state.calls == 0);
    }
    SECTION("a reply larger than its region: the overflow code") {
        Result r = call_typed(contexts, 1, apir::Empty{}, 0, 4);
        CHECK(r.code == overflow_code);
        CHECK(r.reply.empty());
    }
}
