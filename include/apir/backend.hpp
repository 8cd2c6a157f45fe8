// A backend library's umbrella header: the C ABI (backend_abi.h), the wire codec and the
// protocol's codes, and helpers for writing the backend in C++ (the host side of a call).
//
//     extern "C" uint32_t apir_backend_dispatcher(uint32_t ctx, virgl_apir_callbacks* cbs,
//                                                 uint32_t cmd, char* dec_cur, const char* dec_end,
//                                                 char* enc_cur, const char* enc_end,
//                                                 char** enc_cur_after) {
//         apir::BackendFrame f(dec_cur, dec_end, enc_cur, enc_end, enc_cur_after);
//         AddRequest req;
//         if (!f.request().get_into(req)) return my_bad_request;
//         f.reply().put(AddReply{req.a + req.b});
//         return f.finish(my_reply_overflow);
//     }
#pragma once

#include "apir/backend_abi.h"
#include "apir/wire.hpp"

#include <cstddef>
#include <cstdint>
#include <span>

namespace apir {

/// The dispatcher's regions as a Decoder over the request and an Encoder over the reply.
class BackendFrame {
public:
    BackendFrame(const char* dec_cur, const char* dec_end, char* enc_cur, const char* enc_end,
                 char** enc_cur_after) noexcept
        : dec_(std::span<const std::byte>(
              reinterpret_cast<const std::byte*>(dec_cur),
              dec_end >= dec_cur ? static_cast<size_t>(dec_end - dec_cur) : 0)),
          enc_(std::span<std::byte>(reinterpret_cast<std::byte*>(enc_cur),
                                    enc_end >= enc_cur ? static_cast<size_t>(enc_end - enc_cur)
                                                       : 0)),
          enc_cur_(enc_cur), enc_cur_after_(enc_cur_after) {
        *enc_cur_after_ = enc_cur_; // nothing written yet
    }

    [[nodiscard]] Decoder& request() noexcept { return dec_; }
    [[nodiscard]] Encoder& reply() noexcept { return enc_; }

    /// Reports the end of the reply and returns 0, or overflow_code (reporting an
    /// empty reply) when the reply did not fit its region.
    [[nodiscard]] uint32_t finish(uint32_t overflow_code) noexcept {
        if (!enc_.ok()) return overflow_code;
        *enc_cur_after_ = enc_cur_ + enc_.size();
        return 0;
    }

private:
    Decoder dec_;
    Encoder enc_;
    char* enc_cur_;
    char** enc_cur_after_;
};

/// The end of a blob range a backend accepts when the host offered no sized look-up
/// (the standard ABI's get_shmem_ptr gives no size): the backend cannot know a blob's
/// size then, so it trusts ranges up to its own documented limit. The demo and bench
/// backends use this one.
inline constexpr uint64_t default_unsized_range_limit = uint64_t{64} << 20;

/// How a backend finds the blob ranges requests name: the host's sized look-up where
/// it offered one (this project's apir_backend_set_shmem_sized), which checks a range
/// against the blob's real size; otherwise the standard get_shmem_ptr, which checks
/// that the resource exists, with the range's end bounded by unsized_limit.
struct ShmemResolver {
    apir_get_shmem_sized_fn sized = nullptr;
    void* (*unsized)(uint32_t ctx_id, uint32_t res_id) = nullptr; ///< callbacks->get_shmem_ptr
    uint64_t unsized_limit = default_unsized_range_limit;
};

/// [offset, offset + size) of shared-memory resource res_id, or an empty span when the
/// resource is unknown or the range does not lie inside it (sized look-up) or inside
/// the backend's limit (get_shmem_ptr alone), or the host offered no look-up at all.
[[nodiscard]] inline std::span<std::byte> resolve_shmem_range(const ShmemResolver& r,
                                                              uint32_t ctx_id, uint32_t res_id,
                                                              uint64_t offset,
                                                              uint64_t size) noexcept {
    uint64_t blob_size = 0;
    void* p = nullptr;
    if (r.sized) {
        p = r.sized(ctx_id, res_id, &blob_size);
    } else if (r.unsized) {
        p = r.unsized(ctx_id, res_id);
        blob_size = r.unsized_limit;
    }
    if (!p || offset > blob_size || size > blob_size - offset) return {};
    return {static_cast<std::byte*>(p) + offset, static_cast<size_t>(size)};
}

/// The same through the sized look-up alone (nothing resolves without it).
[[nodiscard]] inline std::span<std::byte> resolve_shmem_range(apir_get_shmem_sized_fn lookup,
                                                              uint32_t ctx_id, uint32_t res_id,
                                                              uint64_t offset,
                                                              uint64_t size) noexcept {
    return resolve_shmem_range(ShmemResolver{lookup, nullptr, 0}, ctx_id, res_id, offset, size);
}

} // namespace apir
