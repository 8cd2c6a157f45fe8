// The bench backend: an APIR backend library whose commands model what a ggml host
// backend does on the hot paths apir-bench measures (an empty call, a small typed
// call, a set_tensor that copies out of shared memory, a slow host).
#include "bench_protocol.hpp"

#include <apir/backend.hpp>
#include <apir/wire.hpp>

#include <cstring>
#include <ctime>
#include <memory>
#include <mutex>
#include <new>
#include <unordered_map>

namespace {

constexpr uint64_t max_tensor_bytes = uint64_t{1} << 30; // the peer sizes it: cap it

struct Context {
    apir::ShmemResolver shmem; // sized where the host offers it, else get_shmem_ptr
    // The host-side "tensor" set_tensor copies into (prefaulted when allocated).
    std::unique_ptr<std::byte[]> tensor;
    size_t tensor_size = 0;
};
std::mutex g_mu;
std::unordered_map<uint32_t, Context> g_contexts;

Context* context(uint32_t ctx) {
    std::lock_guard lk(g_mu);
    auto it = g_contexts.find(ctx);
    return it == g_contexts.end() ? nullptr : &it->second;
}

// The blob range a request names, bounds-checked, or an empty span.
std::span<std::byte> resolve(uint32_t ctx, const Context& c, const bench::BlobRange& r) {
    return apir::resolve_shmem_range(c.shmem, ctx, r.res_id, r.offset, r.size);
}

bench::RangeEnds ends(const std::byte* p, size_t n) {
    bench::RangeEnds e;
    if (n >= 8) {
        std::memcpy(&e.first, p, 8);
        std::memcpy(&e.last, p + n - 8, 8);
    }
    return e;
}

void sleep_us(uint32_t us) {
    timespec t{};
    clock_gettime(CLOCK_MONOTONIC, &t);
    const long ns = t.tv_nsec + static_cast<long>(us % 1'000'000) * 1000;
    t.tv_sec += static_cast<time_t>(us / 1'000'000) + ns / 1'000'000'000;
    t.tv_nsec = ns % 1'000'000'000;
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &t, nullptr) != 0) {
    }
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
    if (!cbs || !cbs->get_shmem_ptr) return 6 + 5; // backend failed
    std::lock_guard lk(g_mu);
    g_contexts[ctx_id].shmem.unsized = cbs->get_shmem_ptr;
    return 6; // base index + success
}

__attribute__((visibility("default"))) void apir_backend_deinit(uint32_t ctx_id) {
    std::lock_guard lk(g_mu);
    g_contexts.erase(ctx_id);
}

__attribute__((visibility("default"))) uint32_t
apir_backend_dispatcher(uint32_t ctx_id, virgl_apir_callbacks* cbs, uint32_t cmd_type,
                        char* dec_cur, const char* dec_end, char* enc_cur, const char* enc_end,
                        char** enc_cur_after) {
    using namespace bench;
    (void)cbs;
    apir::BackendFrame frame(dec_cur, dec_end, enc_cur, enc_end, enc_cur_after);
    apir::Decoder& d = frame.request();
    apir::Encoder& e = frame.reply();
    auto finish = [&] { return frame.finish(error_reply_overflow); };

    switch (cmd_type) {
    case cmd_nop:
        return finish();
    case cmd_add: {
        AddRequest req;
        if (!d.get_into(req)) return error_bad_request;
        e.put(AddReply{req.a + req.b});
        return finish();
    }
    case cmd_consume:
    case cmd_set_tensor: {
        BlobRange req;
        if (!d.get_into(req)) return error_bad_request;
        Context* c = context(ctx_id);
        if (!c) return error_bad_resource;
        auto blob = resolve(ctx_id, *c, req);
        if (blob.data() == nullptr) return error_bad_resource;
        if (cmd_type == cmd_consume) {
            // The bytes are already where the host can use them: read them in place.
            e.put(ends(blob.data(), blob.size()));
            return finish();
        }
        // ggml's set_tensor on a CPU buffer: one memcpy from shared memory.
        if (blob.size() > c->tensor_size) return error_no_tensor;
        std::memcpy(c->tensor.get(), blob.data(), blob.size());
        e.put(ends(c->tensor.get(), blob.size()));
        return finish();
    }
    case cmd_alloc_tensor: {
        AllocTensorRequest req;
        if (!d.get_into(req)) return error_bad_request;
        if (req.bytes > max_tensor_bytes) return error_bad_request;
        Context* c = context(ctx_id);
        if (!c) return error_bad_resource;
        const auto n = static_cast<size_t>(req.bytes);
        c->tensor.reset(new (std::nothrow) std::byte[n]);
        if (!c->tensor) return error_no_tensor;
        std::memset(c->tensor.get(), 0, n); // touch every page now, not during a copy
        c->tensor_size = n;
        return finish();
    }
    case cmd_work: {
        WorkRequest req;
        if (!d.get_into(req)) return error_bad_request;
        sleep_us(req.microseconds);
        return finish();
    }
    default:
        return apir::forward_invalid_index;
    }
}

} // extern "C"
