// The C++ face of libggml-apir, for programs that build their own registration (a
// fork embedding the backend, the tests): a Registry owns its devices, each over its
// own Remote, and hands ggml a ggml_backend_reg_t.
//
//     auto remote = apir::ggml_remote::Remote::open(config, logger);   // or a Remote
//     auto reg = apir::ggml_remote::Registry::create(std::move(*remote)); // of your own
//     ggml_backend_register(reg->reg());        // ggml now lists "APIR0"
//
// A Registry must outlive every backend, buffer and device pointer taken from it.
#pragma once

#include "remote.hpp"

#include "ggml-backend.h"

#include <memory>
#include <string>
#include <vector>

namespace apir::ggml_remote {

/// Messages of apir routed into ggml's logger (ggml_log_get), at or above min.
[[nodiscard]] Logger ggml_logger(LogLevel min);

/// The registration name of ggml's own virtio-gpu guest frontend (ggml-virtgpu).
inline constexpr const char* ggml_virtgpu_reg_name = "ggml-virtgpu";
/// Nothing, or BACKEND_ALREADY_INITIALIZED saying what to do when ggml's own virtio-gpu
/// frontend is registered in this process with a device (a ggml built with
/// GGML_VIRTGPU=ON whose frontend found one: its registration's context is set). It holds
/// the VM's device, and a second guest on it fails or makes ggml's frontend abort.
[[nodiscard]] Expected<void> check_no_ggml_virtgpu_frontend();
/// What to do about an error of Registry::create, or empty.
[[nodiscard]] std::string connect_hint(const Error& e);

class Registry {
public:
    /// Connects remote (HANDSHAKE, LOADLIBRARY) and reads the device it offers. With
    /// device_name empty the device is named "APIR<n>", n counting registries made.
    [[nodiscard]] static Expected<std::unique_ptr<Registry>> create(std::unique_ptr<Remote> remote,
                                                                    std::string device_name = {});
    /// A registration without devices (what ggml gets when connecting failed).
    [[nodiscard]] static std::unique_ptr<Registry> empty();
    ~Registry();
    Registry(const Registry&) = delete;
    Registry& operator=(const Registry&) = delete;

    [[nodiscard]] ggml_backend_reg_t reg() noexcept;
    /// The device's Remote (null without a device): its session, stats, lost().
    [[nodiscard]] Remote* remote() noexcept;

    struct Impl;

private:
    explicit Registry(std::unique_ptr<Impl> impl);
    std::unique_ptr<Impl> impl_;
};

} // namespace apir::ggml_remote
