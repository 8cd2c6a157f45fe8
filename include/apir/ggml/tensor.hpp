// What crosses the wire in ggml's command set (PROTOCOL.md §7): opaque handles, the
// 304-byte rpc tensor, ggml's type and op numbers, ggml_status. No ggml header needed.
//
//     apir::ggml::RpcTensor t = apir::ggml::make_tensor(apir::ggml::Type::f32, {4});
//     t.place(buffer, 0);   // the buffer's handle and the data offset in it
//     apir::ggml::nbytes(t) // 16, as ggml_nbytes computes it
#pragma once

#include "apir/error.hpp"
#include "apir/wire.hpp"

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string_view>
#include <type_traits>

#include "apir/export.hpp"

APIR_EXPORT_BEGIN

namespace apir::ggml {

template <class Tag>
class Handle;

namespace detail {
struct HandleAccess;
} // namespace detail

/// A host object named by its host address. Opaque: the guest never dereferences it,
/// and cannot make one from a number: handles come only from decoded host replies (so
/// a client sends back only what it received). A default Handle is null.
template <class Tag>
class Handle {
public:
    constexpr Handle() = default;
    [[nodiscard]] constexpr bool is_null() const noexcept { return value_ == 0; }
    explicit constexpr operator bool() const noexcept { return value_ != 0; }
    /// The host address, for logs and maps; not a pointer in this process.
    [[nodiscard]] constexpr uint64_t value() const noexcept { return value_; }
    friend constexpr bool operator==(Handle, Handle) = default;
    friend constexpr auto operator<=>(Handle, Handle) = default;

private:
    friend struct detail::HandleAccess;
    constexpr explicit Handle(uint64_t v) : value_(v) {}
    uint64_t value_ = 0;
};

struct BufferTypeTag;
struct BufferTag;
/// ggml_backend_buffer_type_t on the host.
using BufferTypeHandle = Handle<BufferTypeTag>;
/// ggml_backend_buffer_t on the host.
using BufferHandle = Handle<BufferTag>;

namespace detail {
/// The one place that turns wire bytes into handles (the codec) and back.
struct HandleAccess {
    template <class Tag>
    static constexpr Handle<Tag> make(uint64_t v) noexcept {
        return Handle<Tag>(v);
    }
};
} // namespace detail

/// ggml_type numbers (stable in ggml: new types are appended, removed ones leave gaps),
/// every type of ggml d99724f2. The wire carries any uint32; the client sends only the
/// types whose sizes it knows (type_traits()).
enum class Type : uint32_t {
    f32 = 0,
    f16 = 1,
    q4_0 = 2,
    q4_1 = 3,
    q5_0 = 6,
    q5_1 = 7,
    q8_0 = 8,
    q8_1 = 9,
    q2_k = 10,
    q3_k = 11,
    q4_k = 12,
    q5_k = 13,
    q6_k = 14,
    q8_k = 15,
    iq2_xxs = 16,
    iq2_xs = 17,
    iq3_xxs = 18,
    iq1_s = 19,
    iq4_nl = 20,
    iq3_s = 21,
    iq2_s = 22,
    iq4_xs = 23,
    i8 = 24,
    i16 = 25,
    i32 = 26,
    i64 = 27,
    f64 = 28,
    iq1_m = 29,
    bf16 = 30,
    tq1_0 = 34,
    tq2_0 = 35,
    mxfp4 = 39,
    nvfp4 = 40,
    q1_0 = 41,
    q2_0 = 42,
};
/// GGML_TYPE_COUNT of ggml d99724f2.
inline constexpr uint32_t type_count = 43;

struct TypeTraits {
    std::string_view name;
    uint32_t block_size = 0; ///< elements per block (1: not quantized)
    uint32_t type_size = 0;  ///< bytes per block
};
/// Size facts of the types above (as ggml's type traits say), or nullopt.
[[nodiscard]] std::optional<TypeTraits> type_traits(Type t) noexcept;

/// ggml_op numbers of ggml d99724f2 (PROTOCOL.md §7). ggml inserts ops in the middle of
/// its enum between versions, so these hold for that version only; libggml-apir and the
/// ggml layer's tests check them against ggml.h (static_asserts). Any other uint32 may be cast to
/// Op.
enum class Op : uint32_t {
    none = 0,
    dup = 1,
    add = 2,
    sub = 6,
    mul = 7,
    div = 8,
    sqr = 9,
    sqrt = 10,
    sum = 14,
    mean = 17,
    mul_mat = 29,
    scale = 32,
    cpy = 34,
    cont = 35,
    reshape = 36,
    view = 37,
    permute = 38,
    transpose = 39,
    map_custom1 = 92,
    map_custom2 = 93,
    map_custom3 = 94,
    custom = 95,
};

/// GGML_OP_COUNT of ggml d99724f2: an op id at or past it is not one of ggml's, and
/// ggml's host aborts on it. Graphs carrying one are refused (validate_graph).
inline constexpr uint32_t op_count = 101;
/// The guest's first filter on an op id: one of ggml's ids, and not a custom op (their
/// op_params hold function pointers of the guest, which the host would call). It says
/// nothing about shapes, types or parameters: whether ggml's host survives the node is
/// the host's to check (apir's host backend does, docs/GGML-HOST.md; ggml's does not).
[[nodiscard]] constexpr bool op_runnable(uint32_t op) noexcept {
    return op < op_count &&
           (op < static_cast<uint32_t>(Op::map_custom1) || op > static_cast<uint32_t>(Op::custom));
}

/// ggml_tensor_flag bits.
enum TensorFlag : int32_t {
    flag_input = 1,
    flag_output = 2,
    flag_param = 4,
    flag_loss = 8,
    flag_compute = 16, ///< the CPU backend computes a node only with this flag
};

inline constexpr size_t max_dims = 4;
inline constexpr size_t max_src = 10;
inline constexpr size_t max_op_params = 16; // int32 words (64 bytes)
inline constexpr size_t max_name = 64;

/// ggml's rpc tensor, as it travels (304 bytes, raw little-endian C layout). data is an
/// offset from the buffer's base, not an address; ne and nb are truncated to 32 bits.
struct RpcTensor {
    uint64_t id = 0; ///< non-zero, unique within one graph
    uint32_t type = 0;
    uint32_t pad0_ = 0;
    BufferHandle buffer; ///< null: none
    std::array<uint32_t, max_dims> ne{};
    std::array<uint32_t, max_dims> nb{};
    uint32_t op = 0;
    std::array<int32_t, max_op_params> op_params{};
    int32_t flags = 0;
    std::array<uint64_t, max_src> src{}; ///< ids of the sources, 0 = none
    uint64_t view_src = 0;
    uint64_t view_offs = 0;
    uint64_t data = 0; ///< offset from the buffer's base
    std::array<char, max_name> name{};
    uint32_t pad1_[2] = {0, 0};

    /// Sets the buffer and the data offset in it.
    RpcTensor& place(BufferHandle b, uint64_t offset) noexcept {
        buffer = b;
        data = offset;
        return *this;
    }
    /// Copies at most 63 chars of n (NUL-terminated).
    RpcTensor& set_name(std::string_view n) noexcept {
        name.fill('\0');
        std::memcpy(name.data(), n.data(), std::min(n.size(), max_name - 1));
        return *this;
    }
};

static_assert(sizeof(RpcTensor) == 304, "ggml's rpc tensor is 304 bytes");
static_assert(std::is_standard_layout_v<RpcTensor> && std::is_trivially_copyable_v<RpcTensor>,
              "the rpc tensor travels as raw bytes (memcpy)");
static_assert(sizeof(BufferHandle) == 8);
static_assert(offsetof(RpcTensor, id) == 0);
static_assert(offsetof(RpcTensor, type) == 8);
static_assert(offsetof(RpcTensor, pad0_) == 12);
static_assert(offsetof(RpcTensor, buffer) == 16);
static_assert(offsetof(RpcTensor, ne) == 24);
static_assert(offsetof(RpcTensor, nb) == 40);
static_assert(offsetof(RpcTensor, op) == 56);
static_assert(offsetof(RpcTensor, op_params) == 60);
static_assert(offsetof(RpcTensor, flags) == 124);
static_assert(offsetof(RpcTensor, src) == 128);
static_assert(offsetof(RpcTensor, view_src) == 208);
static_assert(offsetof(RpcTensor, view_offs) == 216);
static_assert(offsetof(RpcTensor, data) == 224);
static_assert(offsetof(RpcTensor, name) == 232);
static_assert(offsetof(RpcTensor, pad1_) == 296);

/// A contiguous tensor of type t with ne elements per dimension (missing dims are 1):
/// nb as ggml computes it. Unknown types get nb = 0 (nbytes() then fails).
[[nodiscard]] RpcTensor make_tensor(Type t, std::initializer_list<uint32_t> ne) noexcept;

/// Bytes the tensor spans from its data offset, as ggml_nbytes computes it; an error
/// for a type whose size is unknown or a size that overflows.
[[nodiscard]] Expected<uint64_t> nbytes(const RpcTensor& t);

/// ggml_status, with names.
enum class Status : int32_t {
    alloc_failed = -2,
    failed = -1,
    success = 0,
    aborted = 1,
};
[[nodiscard]] constexpr std::string_view status_name(Status s) noexcept {
    switch (s) {
    case Status::alloc_failed:
        return "GGML_STATUS_ALLOC_FAILED";
    case Status::failed:
        return "GGML_STATUS_FAILED";
    case Status::success:
        return "GGML_STATUS_SUCCESS";
    case Status::aborted:
        return "GGML_STATUS_ABORTED";
    }
    return "GGML_STATUS_UNKNOWN";
}
/// A status read off the wire: one of the four, or DECODE_BAD_VALUE.
[[nodiscard]] Expected<Status> to_status(int32_t raw);
/// SUCCESS, or the named error of another status.
[[nodiscard]] Expected<void> check_status(Status s);

/// ggml_backend_dev_type.
enum class DeviceType : uint32_t { cpu = 0, gpu = 1, igpu = 2, accel = 3 };
[[nodiscard]] constexpr std::string_view device_type_name(DeviceType t) noexcept {
    switch (t) {
    case DeviceType::cpu:
        return "CPU";
    case DeviceType::gpu:
        return "GPU";
    case DeviceType::igpu:
        return "IGPU";
    case DeviceType::accel:
        return "ACCEL";
    }
    return "UNKNOWN";
}

} // namespace apir::ggml

namespace apir {

/// Handles travel as uint64 host addresses.
template <class Tag>
struct wire_traits<ggml::Handle<Tag>> {
    static void encode(Encoder& e, const ggml::Handle<Tag>& h) noexcept { e.write_u64(h.value()); }
    static void decode(Decoder& d, ggml::Handle<Tag>& h) noexcept {
        h = ggml::detail::HandleAccess::make<Tag>(d.read_u64());
    }
};

/// The rpc tensor travels as its 304 raw bytes.
template <>
struct wire_traits<ggml::RpcTensor> {
    static void encode(Encoder& e, const ggml::RpcTensor& t) noexcept {
        e.write_bytes(&t, sizeof t);
    }
    static void decode(Decoder& d, ggml::RpcTensor& t) noexcept {
        Bytes b = d.read_bytes(sizeof t);
        if (d.ok())
            std::memcpy(&t, b.data(), sizeof t);
        else
            t = ggml::RpcTensor{};
    }
};

} // namespace apir

APIR_EXPORT_END
