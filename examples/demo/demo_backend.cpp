// The demo APIR backend library: a few remote functions behind the backend ABI.
// The host dlopens it on LOADLIBRARY; it decodes requests with apir's own Decoder.
#include "demo_protocol.hpp"

#include <apir/backend_abi.h>

#include <chrono>
#include <mutex>
#include <thread>
#include <unordered_map>

namespace {

// Per-context state: the checked shared-memory look-up the host gave us.
struct Context {
    apir_get_shmem_sized_fn shmem_sized = nullptr;
};
std::mutex g_mu;
std::unordered_map<uint32_t, Context> g_contexts;

// The blob range a request names, or an empty span if it is not inside the blob.
std::span<std::byte> resolve(uint32_t ctx, virgl_apir_callbacks* cbs, const demo::BlobRange& r) {
    apir_get_shmem_sized_fn sized = nullptr;
    {
        std::lock_guard lk(g_mu);
        auto it = g_contexts.find(ctx);
        if (it != g_contexts.end()) sized = it->second.shmem_sized;
    }
    uint64_t size = 0;
    void* p = sized ? sized(ctx, r.res_id, &size) : nullptr;
    if (!sized) {
        // A host without the sized look-up: we cannot bounds-check, so refuse.
        (void)cbs;
        return {};
    }
    if (!p || r.offset > size || r.size > size - r.offset) return {};
    return {static_cast<std::byte*>(p) + r.offset, static_cast<size_t>(r.size)};
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
    g_contexts[ctx_id].shmem_sized = fn;
}

__attribute__((visibility("default"))) uint32_t apir_backend_initialize(uint32_t ctx_id,
                                                                        virgl_apir_callbacks* cbs) {
    if (!cbs || !cbs->get_config || !cbs->get_shmem_ptr) return 6 + 5; // backend failed
    std::lock_guard lk(g_mu);
    g_contexts[ctx_id]; // the sized look-up may not have been offered
    return 6;           // base index + success
}

__attribute__((visibility("default"))) void apir_backend_deinit(uint32_t ctx_id) {
    std::lock_guard lk(g_mu);
    g_contexts.erase(ctx_id);
}

__attribute__((visibility("default"))) uint32_t
apir_backend_dispatcher(uint32_t ctx_id, virgl_apir_callbacks* cbs, uint32_t cmd_type,
                        char* dec_cur, const char* dec_end, char* enc_cur, const char* enc_end,
                        char** enc_cur_after) {
    using namespace demo;
    apir::Decoder d(std::span<const std::byte>(reinterpret_cast<const std::byte*>(dec_cur),
                                               static_cast<size_t>(dec_end - dec_cur)));
    apir::Encoder e(std::span<std::byte>(reinterpret_cast<std::byte*>(enc_cur),
                                         static_cast<size_t>(enc_end - enc_cur)));
    *enc_cur_after = enc_cur;
    auto finish = [&]() -> uint32_t {
        if (!e.ok()) return error_reply_overflow;
        *enc_cur_after = enc_cur + e.size();
        return 0;
    };

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
        auto blob = resolve(ctx_id, cbs, req);
        if (blob.data() == nullptr && req.size != 0) return error_bad_resource;
        e.put(ChecksumReply{checksum(blob.data(), blob.size())});
        return finish();
    }
    case cmd_fill: {
        BlobRange req;
        if (!decode(d, req)) return error_bad_request;
        auto blob = resolve(ctx_id, cbs, req);
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
