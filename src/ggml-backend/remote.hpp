// Remote: the host's ggml device as libggml-apir sees it — one Session over the
// chosen transport and ggml's command set (PROTOCOL.md §7) as calls that return
// Expected values. Every reply is checked (null handles, base 0, strings, statuses).
//
// A call that times out or finds the host gone marks the remote lost: later calls
// fail at once with DISCONNECTED instead of waiting again, so a ggml program whose
// host died gets failed allocations and failed computes quickly, never a hang.
#pragma once

#include "config.hpp"

#include "apir/session.hpp"
#include "apir/transport.hpp"

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

namespace apir::ggml_remote {

/// The 304-byte rpc tensor of PROTOCOL.md §7, as raw bytes (filled by tensor_codec).
inline constexpr size_t rpc_tensor_size = 304;
using RpcTensor = std::array<std::byte, rpc_tensor_size>;

struct RemoteProps {
    bool async = false, host_buffer = false, buffer_from_host_ptr = false, events = false,
         mmap_support = false;
};

/// ggml_status values as the host sends them.
enum class RemoteStatus : int32_t { alloc_failed = -2, failed = -1, success = 0, aborted = 1 };
[[nodiscard]] std::string_view remote_status_name(RemoteStatus s) noexcept;

class Remote {
public:
    /// A session over transport; nothing is sent until connect().
    Remote(AnyTransport transport, const BackendConfig& config, Logger logger);
    /// Creates the transport the configuration names (virtgpu or loopback).
    [[nodiscard]] static Expected<std::unique_ptr<Remote>> open(const BackendConfig& config,
                                                                Logger logger);

    /// HANDSHAKE + LOADLIBRARY.
    [[nodiscard]] Expected<void> connect();

    [[nodiscard]] Expected<int32_t> device_count();
    [[nodiscard]] Expected<std::string> device_name();
    [[nodiscard]] Expected<std::string> device_description();
    [[nodiscard]] Expected<uint32_t> device_type();
    [[nodiscard]] Expected<std::pair<uint64_t, uint64_t>> device_memory(); ///< free, total
    [[nodiscard]] Expected<RemoteProps> device_props();
    /// The raw ggml tensor encoding of device_supports_op (built by tensor_codec).
    [[nodiscard]] Expected<bool> supports_op(Bytes inline_tensor);
    [[nodiscard]] Expected<uint64_t> buffer_type();
    [[nodiscard]] Expected<std::string> buffer_type_name(uint64_t buft);
    [[nodiscard]] Expected<uint64_t> buffer_type_alignment(uint64_t buft);
    [[nodiscard]] Expected<uint64_t> buffer_type_max_size(uint64_t buft);
    /// OUT_OF_MEMORY when the host answers a null buffer.
    [[nodiscard]] Expected<uint64_t> alloc_buffer(uint64_t buft, uint64_t size);
    [[nodiscard]] Expected<uint64_t> buffer_base(uint64_t buffer);
    /// Copies data to tensor data + offset, through the staging blob, in chunks.
    [[nodiscard]] Expected<void> set_tensor(uint64_t buffer, const RpcTensor& t, Bytes data,
                                            uint64_t offset);
    /// Fills size bytes at tensor data + offset with value (set_tensor of a filled blob).
    [[nodiscard]] Expected<void> fill_tensor(uint64_t buffer, const RpcTensor& t, uint8_t value,
                                             uint64_t offset, uint64_t size);
    [[nodiscard]] Expected<void> get_tensor(uint64_t buffer, const RpcTensor& t,
                                            std::span<std::byte> out, uint64_t offset);
    [[nodiscard]] Expected<bool> cpy_tensor(uint64_t buffer, const RpcTensor& src,
                                            const RpcTensor& dst);
    [[nodiscard]] Expected<void> clear_buffer(uint64_t buffer, uint8_t value);
    [[nodiscard]] Expected<void> free_buffer(uint64_t buffer);
    /// Runs the packed graph held in blob res_id (size bytes).
    [[nodiscard]] Expected<RemoteStatus> graph_compute(uint32_t res_id, uint64_t size);

    /// Shared memory for a caller's own use (the graph blob of a backend stream).
    [[nodiscard]] Expected<Shmem> create_shmem(size_t n);

    /// True once a call timed out or found the host gone.
    [[nodiscard]] bool lost() const noexcept { return lost_.load(std::memory_order_acquire); }
    [[nodiscard]] Session<AnyTransport>& session() noexcept { return session_; }
    [[nodiscard]] const Logger& logger() const noexcept { return logger_; }
    [[nodiscard]] std::string_view transport_name() noexcept { return session_.transport().name(); }
    /// Largest piece of one set/get transfer (the staging blob's size).
    static constexpr size_t max_chunk = size_t{32} << 20;

private:
    template <class C>
    Expected<typename C::response> call(const typename C::request& req, bool compute = false);

    Session<AnyTransport> session_;
    Logger logger_;
    std::chrono::milliseconds call_timeout_;
    std::optional<std::chrono::milliseconds> compute_timeout_;
    std::atomic<bool> lost_{false};
};

} // namespace apir::ggml_remote
