#include "remote.hpp"

#include "apir/call.hpp"
#include "apir/loopback.hpp"
#if APIR_GGML_HAVE_DRM
#include "apir/virtgpu.hpp"
#endif

#include <algorithm>
#include <cstring>

namespace apir::ggml_remote::detail {
/// Raw bytes without a length prefix (the inline tensor of supports_op).
struct Raw {
    Bytes bytes;
};
} // namespace apir::ggml_remote::detail

namespace apir {
template <>
struct wire_traits<ggml_remote::detail::Raw> {
    static constexpr bool is_view = true;
    static void encode(Encoder& e, const ggml_remote::detail::Raw& r) noexcept {
        e.write_bytes(r.bytes);
    }
    static void decode(Decoder& d, ggml_remote::detail::Raw& r) noexcept {
        r.bytes = d.read_bytes(d.remaining());
    }
};
} // namespace apir

namespace apir::ggml_remote {

namespace {

using detail::Raw;

// ggml's command set (PROTOCOL.md §7): the requests and replies of the calls the
// backend makes.
struct Handle {
    uint64_t h = 0;
    static constexpr auto wire_fields = fields(&Handle::h);
};
struct I32 {
    int32_t v = 0;
    static constexpr auto wire_fields = fields(&I32::v);
};
struct U32 {
    uint32_t v = 0;
    static constexpr auto wire_fields = fields(&U32::v);
};
struct U64 {
    uint64_t v = 0;
    static constexpr auto wire_fields = fields(&U64::v);
};
struct Flag {
    bool v = false;
    static constexpr auto wire_fields = fields(&Flag::v);
};
struct Str {
    std::string s;
    static constexpr auto wire_fields = fields(&Str::s);
};
struct Memory {
    uint64_t free = 0, total = 0;
    static constexpr auto wire_fields = fields(&Memory::free, &Memory::total);
};
struct Props {
    bool async = false, host_buffer = false, from_ptr = false, events = false, mmap = false;
    static constexpr auto wire_fields =
        fields(&Props::async, &Props::host_buffer, &Props::from_ptr, &Props::events, &Props::mmap);
};
struct AllocRequest {
    uint64_t buft = 0, size = 0;
    static constexpr auto wire_fields = fields(&AllocRequest::buft, &AllocRequest::size);
};
struct TransferRequest {
    uint64_t buffer = 0;
    RpcTensor tensor{};
    uint32_t res_id = 0;
    uint64_t offset = 0, size = 0;
    static constexpr auto wire_fields =
        fields(&TransferRequest::buffer, &TransferRequest::tensor, &TransferRequest::res_id,
               &TransferRequest::offset, &TransferRequest::size);
};
struct CopyRequest {
    uint64_t buffer = 0;
    RpcTensor src{}, dst{};
    static constexpr auto wire_fields =
        fields(&CopyRequest::buffer, &CopyRequest::src, &CopyRequest::dst);
};
struct ClearRequest {
    uint64_t buffer = 0;
    uint8_t value = 0;
    static constexpr auto wire_fields = fields(&ClearRequest::buffer, &ClearRequest::value);
};
struct ComputeRequest {
    uint32_t res_id = 0;
    uint64_t size = 0;
    static constexpr auto wire_fields = fields(&ComputeRequest::res_id, &ComputeRequest::size);
};

using DeviceGetCount = Forward<1, Empty, I32>;
using DeviceGetName = Forward<2, Empty, Str>;
using DeviceGetDescription = Forward<3, Empty, Str>;
using DeviceGetType = Forward<4, Empty, U32>;
using DeviceGetMemory = Forward<5, Empty, Memory>;
using DeviceSupportsOp = Forward<6, Raw, Flag>;
using DeviceGetBufferType = Forward<7, Empty, Handle>;
using DeviceGetProps = Forward<8, Empty, Props>;
using BufferTypeGetName = Forward<10, Handle, Str>;
using BufferTypeGetAlignment = Forward<11, Handle, U64>;
using BufferTypeGetMaxSize = Forward<12, Handle, U64>;
using BufferTypeAllocBuffer = Forward<14, AllocRequest, Handle>;
using BufferGetBase = Forward<16, Handle, U64>;
using BufferSetTensor = Forward<17, TransferRequest, Empty>;
using BufferGetTensor = Forward<18, TransferRequest, Empty>;
using BufferCpyTensor = Forward<19, CopyRequest, Flag>;
using BufferClear = Forward<20, ClearRequest, Empty>;
using BufferFreeBuffer = Forward<21, Handle, Empty>;
using BackendGraphCompute = Forward<22, ComputeRequest, I32>;

Expected<AnyTransport> make_transport(const BackendConfig& c, const Logger& logger) {
    if (c.transport == TransportKind::loopback) {
        LoopbackOptions lo;
        lo.mode = c.loopback_threaded ? LoopbackOptions::Mode::threaded
                                      : LoopbackOptions::Mode::inline_host;
        lo.host.config = c.host_config;
        lo.host.logger = logger;
        return AnyTransport(std::make_unique<LoopbackTransport>(std::move(lo)));
    }
#if APIR_GGML_HAVE_DRM
    VirtgpuOptions vo;
    vo.node = c.node;
    vo.logger = logger;
    auto t = VirtgpuTransport::open(std::move(vo));
    if (!t) return Unexpected{std::move(t).error()};
    return AnyTransport(std::move(*t));
#else
    return fail(Errc::unsupported, "this libggml-apir was built without the virtio-gpu DRM "
                                   "transport (drm feature); use APIR_GGML_TRANSPORT=loopback");
#endif
}

SessionOptions session_options(const Logger& logger) {
    SessionOptions o;
    o.logger = logger;
    // An inline tensor with a view source and ten sources is 12 raw ggml tensors.
    o.command_buffer_size = 8192;
    return o;
}

} // namespace

std::string_view remote_status_name(RemoteStatus s) noexcept {
    switch (s) {
    case RemoteStatus::alloc_failed:
        return "GGML_STATUS_ALLOC_FAILED";
    case RemoteStatus::failed:
        return "GGML_STATUS_FAILED";
    case RemoteStatus::success:
        return "GGML_STATUS_SUCCESS";
    case RemoteStatus::aborted:
        return "GGML_STATUS_ABORTED";
    }
    return "?";
}

Remote::Remote(AnyTransport transport, const BackendConfig& config, Logger logger)
    : session_(std::move(transport), session_options(logger)), logger_(std::move(logger)),
      call_timeout_(config.call_timeout), compute_timeout_(config.compute_timeout) {}

Expected<std::unique_ptr<Remote>> Remote::open(const BackendConfig& config, Logger logger) {
    auto t = make_transport(config, logger);
    if (!t) return Unexpected{std::move(t).error()};
    return std::make_unique<Remote>(std::move(*t), config, std::move(logger));
}

Expected<void> Remote::connect() {
    auto r = session_.connect();
    if (!r) return Unexpected{std::move(r).error()};
    return {};
}

template <class C>
Expected<typename C::response> Remote::call(const typename C::request& req, bool compute) {
    if (lost())
        return fail(Errc::disconnected, "an earlier call found the host gone or timed out; "
                                        "this device fails every call from now on");
    CallOptions o;
    if (!compute)
        o.deadline = Deadline::after(call_timeout_);
    else if (compute_timeout_)
        o.deadline = Deadline::after(*compute_timeout_);
    else
        o.deadline = Deadline::never();
    auto r = session_.call<C>(req, o);
    if (!r) {
        const Category cat = r.error().category();
        if (cat == Category::timeout || cat == Category::device) {
            if (!lost_.exchange(true, std::memory_order_acq_rel))
                logger_.error("the host is lost ({}); every later call of this device fails "
                              "at once",
                              r.error().message());
        }
    }
    return r;
}

Expected<int32_t> Remote::device_count() {
    auto r = call<DeviceGetCount>(Empty{});
    if (!r) return Unexpected{std::move(r).error()};
    if (r->v < 0) return fail(Errc::decode_bad_value, fmt::format("device count {}", r->v));
    return r->v;
}

Expected<std::string> Remote::device_name() {
    auto r = call<DeviceGetName>(Empty{});
    if (!r) return Unexpected{std::move(r).error()};
    return std::move(r->s);
}

Expected<std::string> Remote::device_description() {
    auto r = call<DeviceGetDescription>(Empty{});
    if (!r) return Unexpected{std::move(r).error()};
    return std::move(r->s);
}

Expected<uint32_t> Remote::device_type() {
    auto r = call<DeviceGetType>(Empty{});
    if (!r) return Unexpected{std::move(r).error()};
    if (r->v > 3) return fail(Errc::decode_bad_value, fmt::format("device type {}", r->v));
    return r->v;
}

Expected<std::pair<uint64_t, uint64_t>> Remote::device_memory() {
    auto r = call<DeviceGetMemory>(Empty{});
    if (!r) return Unexpected{std::move(r).error()};
    return std::pair{r->free, r->total};
}

Expected<RemoteProps> Remote::device_props() {
    auto r = call<DeviceGetProps>(Empty{});
    if (!r) return Unexpected{std::move(r).error()};
    return RemoteProps{r->async, r->host_buffer, r->from_ptr, r->events, r->mmap};
}

Expected<bool> Remote::supports_op(Bytes inline_tensor) {
    auto r = call<DeviceSupportsOp>(Raw{inline_tensor});
    if (!r) return Unexpected{std::move(r).error()};
    return r->v;
}

Expected<uint64_t> Remote::buffer_type() {
    auto r = call<DeviceGetBufferType>(Empty{});
    if (!r) return Unexpected{std::move(r).error()};
    if (r->h == 0) return fail(Errc::decode_bad_value, "the host answered a null buffer type");
    return r->h;
}

Expected<std::string> Remote::buffer_type_name(uint64_t buft) {
    auto r = call<BufferTypeGetName>(Handle{buft});
    if (!r) return Unexpected{std::move(r).error()};
    return std::move(r->s);
}

Expected<uint64_t> Remote::buffer_type_alignment(uint64_t buft) {
    auto r = call<BufferTypeGetAlignment>(Handle{buft});
    if (!r) return Unexpected{std::move(r).error()};
    // ggml's allocator needs a power of two; a page is the most any device asks.
    if (r->v == 0 || (r->v & (r->v - 1)) != 0 || r->v > 4096)
        return fail(Errc::decode_bad_value, fmt::format("buffer alignment {}", r->v));
    return r->v;
}

Expected<uint64_t> Remote::buffer_type_max_size(uint64_t buft) {
    auto r = call<BufferTypeGetMaxSize>(Handle{buft});
    if (!r) return Unexpected{std::move(r).error()};
    if (r->v == 0) return fail(Errc::decode_bad_value, "buffer max size 0");
    return r->v;
}

Expected<uint64_t> Remote::alloc_buffer(uint64_t buft, uint64_t size) {
    auto r = call<BufferTypeAllocBuffer>(AllocRequest{buft, size});
    if (!r) return Unexpected{std::move(r).error()};
    if (r->h == 0)
        return fail(Errc::out_of_memory,
                    fmt::format("the host could not allocate a buffer of {} bytes", size));
    return r->h;
}

Expected<uint64_t> Remote::buffer_base(uint64_t buffer) {
    auto r = call<BufferGetBase>(Handle{buffer});
    if (!r) return Unexpected{std::move(r).error()};
    if (r->v == 0) return fail(Errc::decode_bad_value, "the host answered a buffer base of 0");
    return r->v;
}

Expected<void> Remote::set_tensor(uint64_t buffer, const RpcTensor& t, Bytes data,
                                  uint64_t offset) {
    TransferRequest req{buffer, t, 0, 0, 0};
    for (size_t done = 0; done < data.size();) {
        const size_t n = std::min(max_chunk, data.size() - done);
        auto s = session_.stage(data.subspan(done, n));
        if (!s) return Unexpected{std::move(s).error()};
        req.res_id = s->res_id();
        req.offset = offset + done;
        req.size = n;
        auto r = call<BufferSetTensor>(req);
        if (!r) return Unexpected{std::move(r).error()};
        done += n;
    }
    return {};
}

Expected<void> Remote::fill_tensor(uint64_t buffer, const RpcTensor& t, uint8_t value,
                                   uint64_t offset, uint64_t size) {
    TransferRequest req{buffer, t, 0, 0, 0};
    for (uint64_t done = 0; done < size;) {
        const size_t n = static_cast<size_t>(std::min<uint64_t>(max_chunk, size - done));
        auto s = session_.stage(n);
        if (!s) return Unexpected{std::move(s).error()};
        std::memset(s->bytes().data(), value, n);
        req.res_id = s->res_id();
        req.offset = offset + done;
        req.size = n;
        auto r = call<BufferSetTensor>(req);
        if (!r) return Unexpected{std::move(r).error()};
        done += n;
    }
    return {};
}

Expected<void> Remote::get_tensor(uint64_t buffer, const RpcTensor& t, std::span<std::byte> out,
                                  uint64_t offset) {
    TransferRequest req{buffer, t, 0, 0, 0};
    for (size_t done = 0; done < out.size();) {
        const size_t n = std::min(max_chunk, out.size() - done);
        auto s = session_.stage(n);
        if (!s) return Unexpected{std::move(s).error()};
        req.res_id = s->res_id();
        req.offset = offset + done;
        req.size = n;
        auto r = call<BufferGetTensor>(req);
        if (!r) return Unexpected{std::move(r).error()};
        std::memcpy(out.data() + done, s->bytes().data(), n);
        done += n;
    }
    return {};
}

Expected<bool> Remote::cpy_tensor(uint64_t buffer, const RpcTensor& src, const RpcTensor& dst) {
    auto r = call<BufferCpyTensor>(CopyRequest{buffer, src, dst});
    if (!r) return Unexpected{std::move(r).error()};
    return r->v;
}

Expected<void> Remote::clear_buffer(uint64_t buffer, uint8_t value) {
    auto r = call<BufferClear>(ClearRequest{buffer, value});
    if (!r) return Unexpected{std::move(r).error()};
    return {};
}

Expected<void> Remote::free_buffer(uint64_t buffer) {
    auto r = call<BufferFreeBuffer>(Handle{buffer});
    if (!r) return Unexpected{std::move(r).error()};
    return {};
}

Expected<RemoteStatus> Remote::graph_compute(uint32_t res_id, uint64_t size) {
    auto r = call<BackendGraphCompute>(ComputeRequest{res_id, size}, /*compute=*/true);
    if (!r) return Unexpected{std::move(r).error()};
    if (r->v < -2 || r->v > 1)
        return fail(Errc::decode_bad_value,
                    fmt::format("ggml_status {} is not in ggml's enum", r->v));
    return static_cast<RemoteStatus>(r->v);
}

Expected<Shmem> Remote::create_shmem(size_t n) {
    if (lost()) return fail(Errc::disconnected, "the host is lost");
    return session_.transport().create_shmem(n);
}

} // namespace apir::ggml_remote
