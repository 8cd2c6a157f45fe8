// The two ggml commands whose request is ggml's raw in-memory `struct ggml_tensor`
// (device_supports_op, buffer_type_get_alloc_size), and ggml_tensor -> rpc tensor.
// Needs ggml's own headers, of the same ggml version as the host: the layout is ggml's.
//
//     #include <ggml.h>
//     #include <apir/ggml/ggml_tensor.hpp>
//     auto ok = apir::ggml::supports_op(device, op);               // Expected<bool>
//     auto n = apir::ggml::get_alloc_size(device, buft, tensor);    // Expected<uint64_t>
//
// What is sent is a sanitized copy: guest pointers the host would follow (buffer, src,
// view_src of the copies, extra, data) are cleared, and the host's markers are set only
// where a copy follows (ggml's host reads the buffer handle, the view_src tensor and the
// src tensors that the pointer fields announce).
#pragma once

#include "apir/ggml/client.hpp"

#include <ggml.h>

#include <cstring>

namespace apir::ggml {

/// A tensor to send inline: ggml's tensor, and the host handle of its buffer (null: none).
struct InlineTensor {
    const ggml_tensor* tensor = nullptr;
    BufferHandle buffer;
};

namespace detail {
// A non-null marker: the host replaces it with what follows in the request.
inline void* inline_marker() noexcept {
    return reinterpret_cast<void*>(uintptr_t{1});
}
// A tensor the host may read but must never follow: no pointers.
inline void write_leaf_tensor(Encoder& e, const ggml_tensor& t) noexcept {
    std::byte* p = e.reserve(sizeof(ggml_tensor));
    if (!p) return;
    ggml_tensor c;
    std::memcpy(&c, &t, sizeof c);
    c.buffer = nullptr;
    for (auto& s : c.src)
        s = nullptr;
    c.view_src = nullptr;
    c.data = nullptr;
    c.extra = nullptr;
    std::memcpy(p, &c, sizeof c);
}
} // namespace detail

} // namespace apir::ggml

namespace apir {

template <>
struct wire_traits<ggml::InlineTensor> {
    static_assert(sizeof(ggml_tensor) % 4 == 0, "ggml_tensor travels as whole 4-byte words");
    static void encode(Encoder& e, const ggml::InlineTensor& in) noexcept {
        if (!in.tensor) {
            static_cast<void>(e.reserve(e.remaining() + 1)); // overflow: nothing to send
            return;
        }
        const ggml_tensor& t = *in.tensor;
        std::byte* p = e.reserve(sizeof(ggml_tensor));
        if (!p) return;
        ggml_tensor c;
        std::memcpy(&c, &t, sizeof c);
        c.buffer =
            in.buffer ? static_cast<ggml_backend_buffer*>(ggml::detail::inline_marker()) : nullptr;
        c.view_src =
            t.view_src ? static_cast<ggml_tensor*>(ggml::detail::inline_marker()) : nullptr;
        // The host reads sources up to the first null one; nothing after it may remain.
        bool ended = false;
        for (auto& s : c.src) {
            ended = ended || s == nullptr;
            s = ended ? nullptr : static_cast<ggml_tensor*>(ggml::detail::inline_marker());
        }
        c.data = nullptr;
        c.extra = nullptr;
        std::memcpy(p, &c, sizeof c);
        if (in.buffer) e.put(in.buffer);
        if (t.view_src) ggml::detail::write_leaf_tensor(e, *t.view_src);
        for (const ggml_tensor* s : t.src) {
            if (!s) break;
            ggml::detail::write_leaf_tensor(e, *s);
        }
    }
    // Hosts decode it in place with ggml's own code; nothing here reads it back.
    static void decode(Decoder& d, ggml::InlineTensor&) noexcept { d.set_error(Errc::unsupported); }
};

} // namespace apir

namespace apir::ggml {

struct SupportsOpRequest {
    InlineTensor op;
    static constexpr auto wire_fields = fields(&SupportsOpRequest::op);
};
struct GetAllocSizeRequest {
    BufferTypeHandle buffer_type;
    InlineTensor tensor;
    static constexpr auto wire_fields =
        fields(&GetAllocSizeRequest::buffer_type, &GetAllocSizeRequest::tensor);
};

using DeviceSupportsOp = GgmlCall<Command::device_supports_op, SupportsOpRequest, BoolReply>;
using BufferTypeGetAllocSize =
    GgmlCall<Command::buffer_type_get_alloc_size, GetAllocSizeRequest, U64Reply>;

/// device_supports_op: whether the host's device can compute op (its sources are sent
/// with it). buffer: the host handle of op's buffer, if it has one.
template <Transport T>
[[nodiscard]] Expected<bool> supports_op(Device<T>& dev, const ggml_tensor* op,
                                         BufferHandle buffer = {}) {
    constexpr auto c = Command::device_supports_op;
    if (!op) return fail(Errc::invalid_argument, "device_supports_op: no tensor");
    if (buffer && !dev.buffer(buffer))
        return fail(Errc::ggml_unknown_handle, "device_supports_op: buffer not from this device");
    auto r = dev.template metadata_call<DeviceSupportsOp>(SupportsOpRequest{{op, buffer}});
    if (!r) return Unexpected{std::move(r).error()};
    auto b = detail::to_bool(r->value, "the reply");
    if (!b) return fail(detail::named(std::move(b).error(), c));
    return b;
}

/// buffer_type_get_alloc_size: bytes a buffer of type t needs for tensor.
template <Transport T>
[[nodiscard]] Expected<uint64_t> get_alloc_size(Device<T>& dev, BufferTypeHandle t,
                                                const ggml_tensor* tensor,
                                                BufferHandle buffer = {}) {
    if (!tensor) return fail(Errc::invalid_argument, "buffer_type_get_alloc_size: no tensor");
    if (t.is_null() || !dev.knows(t))
        return fail(Errc::ggml_unknown_handle,
                    "buffer_type_get_alloc_size: buffer type not from this device");
    if (buffer && !dev.buffer(buffer))
        return fail(Errc::ggml_unknown_handle,
                    "buffer_type_get_alloc_size: buffer not from this device");
    auto r = dev.template metadata_call<BufferTypeGetAllocSize>(
        GetAllocSizeRequest{t, {tensor, buffer}});
    if (!r) return Unexpected{std::move(r).error()};
    return r->value;
}

/// The rpc tensor of a ggml tensor whose data lies in a buffer with host handle `buffer`
/// and guest-side base address `base` (data travels as the offset from base). The id
/// is the tensor's address, as ggml's guest does; sources and view_src by address too.
[[nodiscard]] inline RpcTensor to_rpc_tensor(const ggml_tensor* t, BufferHandle buffer,
                                             const void* base) noexcept {
    RpcTensor r;
    r.id = reinterpret_cast<uintptr_t>(t);
    r.type = static_cast<uint32_t>(t->type);
    r.buffer = buffer;
    for (size_t i = 0; i < max_dims; ++i) {
        r.ne[i] = static_cast<uint32_t>(t->ne[i]);
        r.nb[i] = static_cast<uint32_t>(t->nb[i]);
    }
    r.op = static_cast<uint32_t>(t->op);
    std::memcpy(r.op_params.data(), t->op_params, sizeof r.op_params);
    r.flags = t->flags;
    for (size_t i = 0; i < max_src; ++i)
        r.src[i] = reinterpret_cast<uintptr_t>(t->src[i]);
    r.view_src = reinterpret_cast<uintptr_t>(t->view_src);
    r.view_offs = t->view_offs;
    if (t->data && base)
        r.data = reinterpret_cast<uintptr_t>(t->data) - reinterpret_cast<uintptr_t>(base);
    r.set_name(t->name);
    return r;
}

static_assert(sizeof(RpcTensor::op_params) == GGML_MAX_OP_PARAMS);
static_assert(max_dims == GGML_MAX_DIMS && max_src == GGML_MAX_SRC && max_name == GGML_MAX_NAME);

} // namespace apir::ggml
