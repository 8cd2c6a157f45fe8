// The demo APIR backend library: a few remote functions behind the backend ABI.
// The host dlopens it on LOADLIBRARY; it decodes requests with apir's own Decoder and
// is built on the backend kit of apir/backend.hpp (context registry, dispatch table).
#include "demo_protocol.hpp"

#include <apir/backend.hpp>

#include <chrono>
#include <cstring>
#include <thread>

namespace {

using namespace demo;

// No state of its own: a context only knows how the host lets it find blobs. With the
// sized look-up (this project's hosts) a range is checked against its blob; with
// get_shmem_ptr alone (the standard ABI) its end must be within
// apir::default_unsized_range_limit.
struct State {};
using Contexts = apir::ContextRegistry<State>;
using Context = Contexts::Context;
Contexts g_contexts;

// Each handler is bound to its call type (demo_protocol.hpp): the table decodes the
// request, encodes the answer and finishes the reply.
apir::Answer<EchoReply> echo(Context&, const EchoRequest& req) {
    return EchoReply{req.tag, req.text};
}

apir::Answer<AddReply> add(Context&, const AddRequest& req) {
    return AddReply{
        static_cast<int64_t>(static_cast<uint64_t>(req.a) + static_cast<uint64_t>(req.b))};
}

// The blob range a request names, bounds-checked; false when it names none.
bool blob_of(Context& c, const BlobRange& req, std::span<std::byte>& blob) {
    blob = c.resolve(req.res_id, req.offset, req.size);
    return blob.data() != nullptr || req.size == 0;
}

apir::Answer<ChecksumReply> checksum_of(Context& c, const BlobRange& req) {
    std::span<std::byte> blob;
    if (!blob_of(c, req, blob)) return apir::Refusal{error_bad_resource};
    return ChecksumReply{checksum(blob.data(), blob.size())};
}

apir::Answer<apir::Empty> fill(Context& c, const BlobRange& req) {
    std::span<std::byte> blob;
    if (!blob_of(c, req, blob)) return apir::Refusal{error_bad_resource};
    fill_pattern(blob.data(), blob.size(), req.seed);
    return apir::Empty{};
}

apir::Answer<apir::Empty> fail_with(Context&, const FailRequest& req) {
    if (req.code == 0) return apir::Empty{};
    return apir::Refusal{req.code};
}

apir::Answer<apir::Empty> sleep_for(Context&, const SleepRequest& req) {
    std::this_thread::sleep_for(std::chrono::milliseconds(req.milliseconds));
    return apir::Empty{};
}

// Writes raw bytes past what BigReply's encoder would: a hand-written handler.
uint32_t big_reply(Context&, apir::BackendFrame& f) {
    BigReplyRequest req;
    if (!f.request().get_into(req)) return error_bad_request;
    // Our encoder refuses to write past the reply region: the call fails cleanly.
    apir::Encoder& e = f.reply();
    e.write_u64(req.bytes);
    if (std::byte* p = e.reserve(static_cast<size_t>(req.bytes)))
        std::memset(p, 0xab, static_cast<size_t>(req.bytes));
    return 0;
}

constexpr auto g_table = [] {
    apir::DispatchTable<Context, cmd_count> t({.reply_overflow = error_reply_overflow,
                                               .no_context = error_bad_resource,
                                               .bad_request = error_bad_request,
                                               .failed = error_bad_request});
    t.on<Echo, &echo>()
        .on<Add, &add>()
        .on<Checksum, &checksum_of>()
        .on<Fail, &fail_with>()
        .on<Sleep, &sleep_for>()
        .on(cmd_big_reply, &big_reply)
        .on<Fill, &fill>();
    return t;
}();

} // namespace

APIR_BACKEND_CONTEXT_ENTRY_POINTS(g_contexts)
APIR_BACKEND_DISPATCHER(g_contexts, g_table)
