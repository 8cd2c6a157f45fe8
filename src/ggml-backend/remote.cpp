#include "remote.hpp"

#include "apir/loopback.hpp"
#include "apir/vtest.hpp"
#if APIR_GGML_HAVE_DRM
#include "apir/virtgpu.hpp"
#endif

#include <algorithm>
#include <chrono>
#include <cstring>
#include <vector>

namespace apir::ggml_remote {

namespace {

Expected<AnyTransport> make_transport(const BackendConfig& c, const Logger& logger) {
    if (c.transport == TransportKind::loopback) {
        LoopbackOptions lo;
        lo.mode = c.loopback_threaded ? LoopbackOptions::Mode::threaded
                                      : LoopbackOptions::Mode::inline_host;
        lo.host.config = c.host_config;
        lo.host.logger = logger;
        return AnyTransport(std::make_unique<LoopbackTransport>(std::move(lo)));
    }
    if (c.transport == TransportKind::vtest) {
        VtestOptions vo;
        vo.socket_path = c.vtest_socket;
        vo.logger = logger;
        auto t = VtestTransport::open(std::move(vo));
        if (!t) return Unexpected{std::move(t).error()};
        return AnyTransport(std::move(*t));
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

ggml::DeviceOptions device_options(const BackendConfig& c) {
    ggml::DeviceOptions o;
    o.metadata_timeout = c.call_timeout;
    o.transfer_timeout = c.call_timeout;
    if (c.compute_timeout) o.compute_timeout = *c.compute_timeout;
    return o;
}

// [offset, offset + size) inside a tensor of nbytes bytes that lies inside its buffer.
Expected<void> check_transfer(const RemoteBuffer& b, const RpcTensor& t, uint64_t nbytes,
                              uint64_t offset, uint64_t size) {
    if (offset > nbytes || size > nbytes - offset)
        return fail(Errc::invalid_argument,
                    fmt::format("bytes [{}, +{}) outside the tensor's {}", offset, size, nbytes));
    if (t.buffer != b.buffer.handle)
        return fail(Errc::invalid_argument, "tensor of another buffer");
    return ggml::detail::check_range(t, b.buffer.size, 0, nbytes);
}

} // namespace

Remote::Remote(AnyTransport transport, const BackendConfig& config, Logger logger)
    : session_(std::move(transport), session_options(logger)), options_(device_options(config)),
      device_(session_, options_), logger_(std::move(logger)) {}

Remote::~Remote() = default;

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

Unexpected Remote::lost_error() {
    return fail(Errc::disconnected, "an earlier call found the host gone or timed out; "
                                    "this device fails every call from now on");
}

namespace {
int64_t now_ns() noexcept {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(
               std::chrono::steady_clock::now().time_since_epoch())
        .count();
}
} // namespace

Remote::Ticket Remote::begin_call() noexcept {
    const bool queued = in_flight_.fetch_add(1, std::memory_order_acq_rel) > 0;
    return Ticket{now_ns(), queued};
}

void Remote::end_call(const Ticket& t, const Error* err) {
    in_flight_.fetch_sub(1, std::memory_order_acq_rel);
    const Category cat = err ? err->category() : Category::backend;
    if (!err || cat == Category::backend || cat == Category::protocol) {
        // The host answered (a refusal or a malformed reply is an answer too).
        int64_t now = now_ns(), seen = last_reply_ns_.load(std::memory_order_relaxed);
        while (seen < now &&
               !last_reply_ns_.compare_exchange_weak(seen, now, std::memory_order_relaxed)) {
        }
        return;
    }
    bool lost = cat == Category::device;
    if (cat == Category::timeout) {
        const bool answered_meanwhile = last_reply_ns_.load(std::memory_order_relaxed) > t.start_ns;
        lost = !t.queued && !answered_meanwhile;
        if (!lost)
            logger_.warn("{}: the call waited behind another call of this device (the host "
                         "is busy, not lost)",
                         err->message());
    }
    if (lost && !lost_.exchange(true, std::memory_order_acq_rel))
        logger_.error("the host is lost ({}); every later call of this device fails at once",
                      err->message());
}

template <class C>
Expected<typename C::response> Remote::call(const typename C::request& req, Deadline deadline) {
    if (lost()) return lost_error();
    CallOptions o;
    o.deadline = deadline;
    const Ticket t = begin_call();
    auto r = session_.call<C>(req, o);
    end_call(t, r ? nullptr : &r.error());
    return r;
}

template <class C, class Before, class After>
Expected<void> Remote::chunked(const RpcTensor& t, uint64_t offset, uint64_t size, Before&& before,
                               After&& after) {
    ggml::TensorTransferRequest req{t.buffer, t, 0, 0, 0};
    for (uint64_t done = 0; done < size;) {
        const size_t n = static_cast<size_t>(std::min<uint64_t>(chunk_size(), size - done));
        // One deadline per chunk: waiting for a staging blob counts against it too.
        const Deadline deadline = Deadline::after(options_.transfer_timeout);
        auto s = session_.stage(n, deadline);
        if (!s) return Unexpected{std::move(s).error()};
        before(s->bytes(), static_cast<size_t>(done));
        req.res_id = s->res_id();
        req.offset = offset + done;
        req.size = n;
        APIR_TRY(call<C>(req, deadline));
        after(s->bytes(), static_cast<size_t>(done));
        done += n;
    }
    return {};
}

Expected<void> Remote::set_tensor(const RemoteBuffer& b, const RpcTensor& t, uint64_t nbytes,
                                  Bytes data, uint64_t offset) {
    APIR_TRY(check_transfer(b, t, nbytes, offset, data.size()));
    return chunked<ggml::BufferSetTensor>(
        t, offset, data.size(),
        [&](std::span<std::byte> staged, size_t at) {
            std::memcpy(staged.data(), data.data() + at, staged.size());
        },
        [](std::span<std::byte>, size_t) {});
}

Expected<void> Remote::fill_tensor(const RemoteBuffer& b, const RpcTensor& t, uint64_t nbytes,
                                   uint8_t value, uint64_t offset, uint64_t size) {
    APIR_TRY(check_transfer(b, t, nbytes, offset, size));
    return chunked<ggml::BufferSetTensor>(
        t, offset, size,
        [&](std::span<std::byte> staged, size_t) {
            std::memset(staged.data(), value, staged.size());
        },
        [](std::span<std::byte>, size_t) {});
}

Expected<void> Remote::get_tensor(const RemoteBuffer& b, const RpcTensor& t, uint64_t nbytes,
                                  std::span<std::byte> out, uint64_t offset) {
    APIR_TRY(check_transfer(b, t, nbytes, offset, out.size()));
    return chunked<ggml::BufferGetTensor>(
        t, offset, out.size(), [](std::span<std::byte>, size_t) {},
        [&](std::span<std::byte> staged, size_t at) {
            std::memcpy(out.data() + at, staged.data(), staged.size());
        });
}

Expected<bool> Remote::copy_tensor(const RemoteBuffer& dst_buffer, const RpcTensor& src,
                                   const RpcTensor& dst) {
    auto r =
        call<ggml::BufferCpyTensor>(ggml::CopyTensorRequest{dst_buffer.buffer.handle, src, dst},
                                    Deadline::after(options_.metadata_timeout));
    if (!r) return Unexpected{std::move(r).error()};
    return r->value != 0;
}

Expected<ggml::Status> Remote::graph_compute(uint32_t res_id, uint64_t size) {
    const Deadline d =
        options_.compute_timeout ? Deadline::after(*options_.compute_timeout) : Deadline::never();
    auto r = call<ggml::BackendGraphCompute>(ggml::GraphComputeRequest{res_id, size}, d);
    if (!r) return Unexpected{std::move(r).error()};
    return ggml::to_status(r->status);
}

Expected<Shmem> Remote::create_shmem(size_t n) {
    if (lost()) return lost_error();
    return session_.transport().create_shmem(n);
}

} // namespace apir::ggml_remote
