#include "remote.hpp"

#include "apir/config.hpp"
#include "apir/loopback.hpp"
#include "apir/vtest.hpp"
#if APIR_HAVE_DRM
#include "apir/virtgpu.hpp"
#endif

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
#if APIR_HAVE_DRM
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

} // namespace

Remote::Remote(AnyTransport transport, const BackendConfig& config, Logger logger)
    : session_(std::move(transport), session_options(logger)),
      device_(session_, device_options(config)), logger_(std::move(logger)),
      zero_copy_allowed_(config.zero_copy), memory_max_age_(config.memory_max_age) {}

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

} // namespace apir::ggml_remote
