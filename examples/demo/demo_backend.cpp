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

uint32_t echo(Context&, apir::BackendFrame& f) {
    EchoRequest req;
    if (!f.request().get_into(req)) return error_bad_request;
    f.reply().put(EchoReply{req.tag, req.text});
    return 0;
}

uint32_t add(Context&, apir::BackendFrame& f) {
    AddRequest req;
    if (!f.request().get_into(req)) return error_bad_request;
    f.reply().put(AddReply{
        static_cast<int64_t>(static_cast<uint64_t>(req.a) + static_cast<uint64_t>(req.b))});
    return 0;
}

// The blob range a request names, bounds-checked; false when it names none.
bool blob_of(Context& c, const BlobRange& req, std::span<std::byte>& blob) {
    blob = c.resolve(req.res_id, req.offset, req.size);
    return blob.data() != nullptr || req.size == 0;
}

uint32_t checksum_of(Context& c, apir::BackendFrame& f) {
    BlobRange req;
    std::span<std::byte> blob;
    if (!f.request().get_into(req)) return error_bad_request;
    if (!blob_of(c, req, blob)) return error_bad_resource;
    f.reply().put(ChecksumReply{checksum(blob.data(), blob.size())});
    return 0;
}

uint32_t fill(Context& c, apir::BackendFrame& f) {
    BlobRange req;
    std::span<std::byte> blob;
    if (!f.request().get_into(req)) return error_bad_request;
    if (!blob_of(c, req, blob)) return error_bad_resource;
    fill_pattern(blob.data(), blob.size(), req.seed);
    return 0;
}

uint32_t fail_with(Context&, apir::BackendFrame& f) {
    FailRequest req;
    if (!f.request().get_into(req)) return error_bad_request;
    return req.code;
}

uint32_t sleep_for(Context&, apir::BackendFrame& f) {
    SleepRequest req;
    if (!f.request().get_into(req)) return error_bad_request;
    std::this_thread::sleep_for(std::chrono::milliseconds(req.milliseconds));
    return 0;
}

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
    apir::DispatchTable<Context, cmd_count> t(
        {.reply_overflow = error_reply_overflow, .no_context = error_bad_resource});
    t.on(cmd_echo, &echo)
        .on(cmd_add, &add)
        .on(cmd_checksum, &checksum_of)
        .on(cmd_fail, &fail_with)
        .on(cmd_sleep, &sleep_for)
        .on(cmd_big_reply, &big_reply)
        .on(cmd_fill, &fill);
    return t;
}();

} // namespace

APIR_BACKEND_CONTEXT_ENTRY_POINTS(g_contexts)
APIR_BACKEND_DISPATCHER(g_contexts, g_table)
