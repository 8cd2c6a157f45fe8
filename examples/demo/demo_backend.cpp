// The demo APIR backend library: a few remote functions behind the backend ABI.
// The host dlopens it on LOADLIBRARY; it decodes requests with apir's own Decoder.
#include "demo_protocol.hpp"

#include <apir/backend.hpp>

#include <chrono>
#include <mutex>
#include <thread>
#include <unordered_map>

namespace {

// Per-context state: how the host lets us find blobs. With the sized look-up (this
// project's hosts) a range is checked against its blob; with get_shmem_ptr alone (the
// standard ABI) its end must be within apir::default_unsized_range_limit.
struct Context {
    apir::ShmemResolver shmem;
};
std::mutex g_mu;
std::unordered_map<uint32_t, Context> g_contexts;

// The blob range a request names, bounds-checked, or an empty span.
std::span<std::byte> resolve(uint32_t ctx, const demo::BlobRange& r) {
    apir::ShmemResolver shmem;
    {
        std::lock_guard lk(g_mu);
        auto it = g_contexts.find(ctx);
        if (it != g_contexts.end()) shmem = it->second.shmem;
    }
    return apir::resolve_shmem_range(shmem, ctx, r.res_id, r.offset, r.size);
}

template <class Req>
bool decode(apir::Decoder& d, Req& req) {
    return d.get_into(req);
}

} // namespace

extern "C" {

__attribute__((visibility("default"))) void
apir_backend_set_shmem_sized(uint32_t ctx_id, apir_get_shmem_sized_fn fn) {
    std::lock_guard lk(g_mu);
    g_contexts[ctx_id].shmem.sized = fn;
}

__attribute__((visibility("default"))) uint32_t apir_backend_initialize(uint32_t ctx_id,
                                                                        virgl_apir_callbacks* cbs) {
    if (!cbs || !cbs->get_config || !cbs->get_shmem_ptr) return 6 + 5; // backend failed
    std::lock_guard lk(g_mu);
    g_contexts[ctx_id].shmem.unsized = cbs->get_shmem_ptr; // the sized one may never come
    return 6;                                              // base index + success
}

__attribute__((visibility("default"))) void apir_backend_deinit(uint32_t ctx_id) {
    std::lock_guard lk(g_mu);
    g_contexts.erase(ctx_id);
}

__attribute__((visibility("default"))) uint32_t
apir_backend_dispatcher(uint32_t ctx_id, virgl_apir_callbacks*, uint32_t cmd_type, char* dec_cur,
                        const char* dec_end, char* enc_cur, const char* enc_end,
                        char** enc_cur_after) {
    using namespace demo;
    apir::BackendFrame frame(dec_cur, dec_end, enc_cur, enc_end, enc_cur_after);
    apir::Decoder& d = frame.request();
    apir::Encoder& e = frame.reply();
    auto finish = [&] { return frame.finish(error_reply_overflow); };

    switch (cmd_type) {
    case cmd_echo: {
        EchoRequest req;
        if (!decode(d, req)) return error_bad_request;
        e.put(EchoReply{req.tag, req.text});
        return finish();
    }
    case cmd_add: {
        AddRequest req;
        if (!decode(d, req)) return error_bad_request;
        e.put(AddReply{
            static_cast<int64_t>(static_cast<uint64_t>(req.a) + static_cast<uint64_t>(req.b))});
        return finish();
    }
    case cmd_checksum: {
        BlobRange req;
        if (!decode(d, req)) return error_bad_request;
        auto blob = resolve(ctx_id, req);
        if (blob.data() == nullptr && req.size != 0) return error_bad_resource;
        e.put(ChecksumReply{checksum(blob.data(), blob.size())});
        return finish();
    }
    case cmd_fill: {
        BlobRange req;
        if (!decode(d, req)) return error_bad_request;
        auto blob = resolve(ctx_id, req);
        if (blob.data() == nullptr && req.size != 0) return error_bad_resource;
        fill_pattern(blob.data(), blob.size(), req.seed);
        return finish();
    }
    case cmd_fail: {
        FailRequest req;
        if (!decode(d, req)) return error_bad_request;
        return req.code;
    }
    case cmd_sleep: {
        SleepRequest req;
        if (!decode(d, req)) return error_bad_request;
        std::this_thread::sleep_for(std::chrono::milliseconds(req.milliseconds));
        return finish();
    }
    case cmd_big_reply: {
        BigReplyRequest req;
        if (!decode(d, req)) return error_bad_request;
        // Our encoder refuses to write past the reply region: the call fails cleanly.
        e.write_u64(req.bytes);
        if (std::byte* p = e.reserve(static_cast<size_t>(req.bytes)))
            std::memset(p, 0xab, static_cast<size_t>(req.bytes));
        return finish();
    }
    default:
        return apir::forward_invalid_index;
    }
}

} // extern "C"
