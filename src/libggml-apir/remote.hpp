// Remote: the host's ggml device as libggml-apir sees it: a Session over the transport
// the configuration names and the one ggml client on it, apir::ggml::Device
// (include/apir/ggml/client.hpp), which sizes tensors of every ggml type, checks every
// reply, moves bulk data in chunks and fails fast once the host is lost. libggml-apir
// adds ggml's interfaces on top (backend.cpp), nothing of the command set.
#pragma once

#include "config.hpp"

#include "apir/ggml/client.hpp"
#include "apir/ggml/ggml_tensor.hpp"
#include "apir/session.hpp"
#include "apir/transport.hpp"

#include <cstdint>
#include <memory>
#include <string>

namespace apir::ggml_remote {

using ggml::BufferHandle;
using ggml::BufferTypeHandle;
using ggml::RpcTensor;

/// A buffer of the host: what the host gave (handle, size) and its base address there.
struct RemoteBuffer {
    ggml::Buffer buffer;
    uint64_t base = 0;
};

class Remote {
public:
    using Device = ggml::Device<AnyTransport>;

    /// A session over transport; nothing is sent until connect().
    Remote(AnyTransport transport, const BackendConfig& config, Logger logger);
    /// Creates the transport the configuration names (virtgpu, vtest or loopback).
    [[nodiscard]] static Expected<std::unique_ptr<Remote>> open(const BackendConfig& config,
                                                                Logger logger);
    ~Remote();

    /// HANDSHAKE + LOADLIBRARY.
    [[nodiscard]] Expected<void> connect();

    [[nodiscard]] Device& device() noexcept { return device_; }
    [[nodiscard]] const Device& device() const noexcept { return device_; }
    [[nodiscard]] Session<AnyTransport>& session() noexcept { return session_; }
    [[nodiscard]] const Logger& logger() const noexcept { return logger_; }
    [[nodiscard]] std::string_view transport_name() noexcept { return session_.transport().name(); }
    /// Whether the configuration lets buffers be zero-copy (APIR_GGML_ZERO_COPY).
    [[nodiscard]] bool zero_copy_allowed() const noexcept { return zero_copy_allowed_; }
    /// How old a memory answer may be when it is given again (APIR_GGML_MEMORY_MAX_AGE_MS).
    [[nodiscard]] std::chrono::milliseconds memory_max_age() const noexcept {
        return memory_max_age_;
    }

private:
    Session<AnyTransport> session_;
    Device device_;
    Logger logger_;
    bool zero_copy_allowed_;
    std::chrono::milliseconds memory_max_age_;
};

} // namespace apir::ggml_remote
