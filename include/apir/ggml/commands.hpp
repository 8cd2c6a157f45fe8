// ggml's command set over FORWARD (PROTOCOL.md §7), one typed call per command, with
// request and reply types whose bytes are what ggml's host backend reads and writes.
//
//     using namespace apir::ggml;
//     auto n = session.call<DeviceGetName>(apir::Empty{});              // Expected<StringReply>
//     auto b = session.call<BufferGetBase>(BufferRequest{buffer});      // Expected<U64Reply>
//     command_name(BufferSetTensor::flags)                              // "buffer_set_tensor"
//
// Session::stats() counts FORWARD ids; named_stats() (below) puts ggml's names on them.
// Two commands carry ggml's raw in-memory tensor (device_supports_op and
// buffer_type_get_alloc_size): their call types are in apir/ggml/ggml_tensor.hpp, which
// needs ggml's own headers. apir::ggml::Device (apir/ggml/client.hpp) wraps all of them.
#pragma once

#include "apir/call.hpp"
#include "apir/ggml/tensor.hpp"
#include "apir/session.hpp"

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "apir/export.hpp"

APIR_EXPORT_BEGIN

namespace apir::ggml {

/// FORWARD ids of ggml's host backend (ggml d99724f2).
enum class Command : uint32_t {
    device_get_device_count = 0,
    device_get_count = 1,
    device_get_name = 2,
    device_get_description = 3,
    device_get_type = 4,
    device_get_memory = 5,
    device_supports_op = 6,
    device_get_buffer_type = 7,
    device_get_props = 8,
    device_buffer_from_ptr = 9,
    buffer_type_get_name = 10,
    buffer_type_get_alignment = 11,
    buffer_type_get_max_size = 12,
    buffer_type_is_host = 13,
    buffer_type_alloc_buffer = 14,
    buffer_type_get_alloc_size = 15,
    buffer_get_base = 16,
    buffer_set_tensor = 17,
    buffer_get_tensor = 18,
    buffer_cpy_tensor = 19,
    buffer_clear = 20,
    buffer_free_buffer = 21,
    backend_graph_compute = 22,
};
inline constexpr uint32_t command_count = 23;

/// apir's extension of ggml's command set (docs/PROTOCOL.md, "Extensions"): one FORWARD
/// id, "APIR" in ASCII, far past ggml's ids so that no ggml version gives it a meaning.
/// ggml's host backend answers it FORWARD_INVALID_INDEX (its table ends at 23), which a
/// guest takes as "no extension": only ggml's 23 commands. apir's host backend answers
/// CapabilitiesReply.
inline constexpr uint32_t capabilities_command = 0x41504952;

/// ggml's name of a command id ("buffer_set_tensor"), or "unknown".
[[nodiscard]] constexpr std::string_view command_name(uint32_t id) noexcept {
    constexpr std::array<std::string_view, command_count> names{
        "device_get_device_count",    "device_get_count",       "device_get_name",
        "device_get_description",     "device_get_type",        "device_get_memory",
        "device_supports_op",         "device_get_buffer_type", "device_get_props",
        "device_buffer_from_ptr",     "buffer_type_get_name",   "buffer_type_get_alignment",
        "buffer_type_get_max_size",   "buffer_type_is_host",    "buffer_type_alloc_buffer",
        "buffer_type_get_alloc_size", "buffer_get_base",        "buffer_set_tensor",
        "buffer_get_tensor",          "buffer_cpy_tensor",      "buffer_clear",
        "buffer_free_buffer",         "backend_graph_compute",
    };
    if (id == capabilities_command) return "apir_capabilities";
    return id < command_count ? names[id] : std::string_view("unknown");
}
[[nodiscard]] constexpr std::string_view command_name(Command c) noexcept {
    return command_name(static_cast<uint32_t>(c));
}

/// A call of ggml's command C.
template <Command C, class Req, class Resp = Empty>
using GgmlCall = Forward<static_cast<uint32_t>(C), Req, Resp>;

// ---------------------------------------------------------------------------
// Requests and replies (field order = wire order)

struct I32Reply {
    int32_t value = 0;
    static constexpr auto wire_fields = fields(&I32Reply::value);
};
struct U32Reply {
    uint32_t value = 0;
    static constexpr auto wire_fields = fields(&U32Reply::value);
};
struct U64Reply {
    uint64_t value = 0;
    static constexpr auto wire_fields = fields(&U64Reply::value);
};
/// A ggml bool: 4 bytes, the value in the first (the host leaves the others unwritten).
struct BoolReply {
    uint8_t value = 0;
    static constexpr auto wire_fields = fields(&BoolReply::value);
};
struct StringReply {
    std::string value;
    static constexpr auto wire_fields = fields(&StringReply::value);
};
struct MemoryReply {
    uint64_t free = 0;
    uint64_t total = 0;
    static constexpr auto wire_fields = fields(&MemoryReply::free, &MemoryReply::total);
};
struct PropsReply {
    uint8_t async = 0;
    uint8_t host_buffer = 0;
    uint8_t buffer_from_host_ptr = 0;
    uint8_t events = 0;
    uint8_t mmap_support = 0;
    static constexpr auto wire_fields =
        fields(&PropsReply::async, &PropsReply::host_buffer, &PropsReply::buffer_from_host_ptr,
               &PropsReply::events, &PropsReply::mmap_support);
};
struct BufferTypeReply {
    BufferTypeHandle buffer_type;
    static constexpr auto wire_fields = fields(&BufferTypeReply::buffer_type);
};
struct BufferReply {
    BufferHandle buffer;
    static constexpr auto wire_fields = fields(&BufferReply::buffer);
};

struct BufferFromPtrRequest {
    uint32_t res_id = 0; ///< the blob the buffer lives in
    uint64_t size = 0;
    uint64_t max_tensor_size = 0;
    static constexpr auto wire_fields =
        fields(&BufferFromPtrRequest::res_id, &BufferFromPtrRequest::size,
               &BufferFromPtrRequest::max_tensor_size);
};
struct BufferFromPtrReply {
    BufferHandle buffer;
    BufferTypeHandle buffer_type;
    static constexpr auto wire_fields =
        fields(&BufferFromPtrReply::buffer, &BufferFromPtrReply::buffer_type);
};

struct BufferTypeRequest {
    BufferTypeHandle buffer_type;
    static constexpr auto wire_fields = fields(&BufferTypeRequest::buffer_type);
};
struct AllocBufferRequest {
    BufferTypeHandle buffer_type;
    uint64_t size = 0;
    static constexpr auto wire_fields =
        fields(&AllocBufferRequest::buffer_type, &AllocBufferRequest::size);
};

struct BufferRequest {
    BufferHandle buffer;
    static constexpr auto wire_fields = fields(&BufferRequest::buffer);
};
/// set_tensor / get_tensor: `size` bytes between the start of blob res_id and the
/// tensor's data + offset.
struct TensorTransferRequest {
    BufferHandle buffer;
    RpcTensor tensor;
    uint32_t res_id = 0;
    uint64_t offset = 0;
    uint64_t size = 0;
    static constexpr auto wire_fields =
        fields(&TensorTransferRequest::buffer, &TensorTransferRequest::tensor,
               &TensorTransferRequest::res_id, &TensorTransferRequest::offset,
               &TensorTransferRequest::size);
};
struct CopyTensorRequest {
    BufferHandle buffer;
    RpcTensor src;
    RpcTensor dst;
    static constexpr auto wire_fields =
        fields(&CopyTensorRequest::buffer, &CopyTensorRequest::src, &CopyTensorRequest::dst);
};
struct ClearRequest {
    BufferHandle buffer;
    uint8_t value = 0;
    static constexpr auto wire_fields = fields(&ClearRequest::buffer, &ClearRequest::value);
};
/// The graph is in blob res_id, `size` bytes from its start (apir/ggml/graph.hpp).
struct GraphComputeRequest {
    uint32_t res_id = 0;
    uint64_t size = 0;
    static constexpr auto wire_fields =
        fields(&GraphComputeRequest::res_id, &GraphComputeRequest::size);
};
struct StatusReply {
    int32_t status = 0; ///< ggml_status; check with to_status()
    static constexpr auto wire_fields = fields(&StatusReply::status);
};

/// What apir's host backend offers past ggml's command set.
enum CapabilityFlag : uint64_t {
    /// device_buffer_from_ptr buffers are safe to make and to free, and the host's
    /// device reads and writes their bytes in the blob itself: the guest may set, get
    /// and clear them in place, without a call (zero-copy buffers).
    capability_zero_copy_buffers = 1,
};
struct CapabilitiesReply {
    uint32_t version = 0; ///< of this reply's layout: 1
    uint64_t flags = 0;   ///< CapabilityFlag bits; unknown bits are ignored
    static constexpr auto wire_fields =
        fields(&CapabilitiesReply::version, &CapabilitiesReply::flags);
};

// ---------------------------------------------------------------------------
// The typed calls (device_supports_op and buffer_type_get_alloc_size: ggml_tensor.hpp)

using DeviceGetDeviceCount = GgmlCall<Command::device_get_device_count, Empty, I32Reply>;
using DeviceGetCount = GgmlCall<Command::device_get_count, Empty, I32Reply>;
using DeviceGetName = GgmlCall<Command::device_get_name, Empty, StringReply>;
using DeviceGetDescription = GgmlCall<Command::device_get_description, Empty, StringReply>;
using DeviceGetType = GgmlCall<Command::device_get_type, Empty, U32Reply>;
using DeviceGetMemory = GgmlCall<Command::device_get_memory, Empty, MemoryReply>;
using DeviceGetBufferType = GgmlCall<Command::device_get_buffer_type, Empty, BufferTypeReply>;
using DeviceGetProps = GgmlCall<Command::device_get_props, Empty, PropsReply>;
using DeviceBufferFromPtr =
    GgmlCall<Command::device_buffer_from_ptr, BufferFromPtrRequest, BufferFromPtrReply>;
using BufferTypeGetName = GgmlCall<Command::buffer_type_get_name, BufferTypeRequest, StringReply>;
using BufferTypeGetAlignment =
    GgmlCall<Command::buffer_type_get_alignment, BufferTypeRequest, U64Reply>;
using BufferTypeGetMaxSize =
    GgmlCall<Command::buffer_type_get_max_size, BufferTypeRequest, U64Reply>;
using BufferTypeIsHost = GgmlCall<Command::buffer_type_is_host, BufferTypeRequest, BoolReply>;
using BufferTypeAllocBuffer =
    GgmlCall<Command::buffer_type_alloc_buffer, AllocBufferRequest, BufferReply>;
using BufferGetBase = GgmlCall<Command::buffer_get_base, BufferRequest, U64Reply>;
using BufferSetTensor = GgmlCall<Command::buffer_set_tensor, TensorTransferRequest>;
using BufferGetTensor = GgmlCall<Command::buffer_get_tensor, TensorTransferRequest>;
using BufferCpyTensor = GgmlCall<Command::buffer_cpy_tensor, CopyTensorRequest, BoolReply>;
using BufferClear = GgmlCall<Command::buffer_clear, ClearRequest>;
using BufferFreeBuffer = GgmlCall<Command::buffer_free_buffer, BufferRequest>;
using BackendGraphCompute =
    GgmlCall<Command::backend_graph_compute, GraphComputeRequest, StatusReply>;
/// The extension query (capabilities_command).
using GetCapabilities = Forward<capabilities_command, Empty, CapabilitiesReply>;

/// Session counters with ggml's command names (FORWARD ids past the set: "unknown").
struct NamedStats {
    std::string_view name;
    CommandStats stats;
};
/// Names the FORWARD entries of Session::stats(); HANDSHAKE and LOADLIBRARY keep the
/// command type's name.
template <class Stats>
[[nodiscard]] std::vector<NamedStats> named_stats(const Stats& stats) {
    std::vector<NamedStats> out;
    out.reserve(stats.size());
    for (const CommandStats& s : stats)
        out.push_back({s.type == CommandType::forward
                           ? command_name(s.id)
                           : command_type_name(static_cast<int32_t>(s.type)),
                       s});
    return out;
}

} // namespace apir::ggml

APIR_EXPORT_END
