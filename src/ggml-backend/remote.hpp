// Remote: the host's ggml device as libggml-apir sees it — a Session over the chosen
// transport and an apir::ggml::Device on it (include/apir/ggml/), plus two things the
// backend needs on top:
//
// - A lost host fails fast: a call that finds the host gone (a device error such as
//   DISCONNECTED) marks the remote lost, and every later call fails at once with
//   DISCONNECTED instead of waiting again, so a ggml program whose host died gets failed
//   allocations and failed computes quickly, never a hang. A timeout is evidence of loss
//   only when the call waited for the host alone: no other call of this remote was in
//   flight when it was made, and no reply came from the host during its wait. A call
//   that timed out behind another (the host runs one command at a time, so behind a long
//   graph of another stream) fails with TIMEOUT and leaves the device usable.
// - Transfers, copies and graphs of every ggml type: apir::ggml::Device checks tensor
//   sizes with its own table of types, which lacks ggml's k-quants and i-quants; here
//   ggml itself (ggml_nbytes) sizes the tensor, and the same typed commands are sent.
#pragma once

#include "config.hpp"

#include "apir/ggml/client.hpp"
#include "apir/ggml/ggml_tensor.hpp"
#include "apir/session.hpp"
#include "apir/transport.hpp"

#include <atomic>
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
    /// Creates the transport the configuration names (virtgpu or loopback).
    [[nodiscard]] static Expected<std::unique_ptr<Remote>> open(const BackendConfig& config,
                                                                Logger logger);
    ~Remote();

    /// HANDSHAKE + LOADLIBRARY.
    [[nodiscard]] Expected<void> connect();

    /// Runs f(device) unless the host is lost; marks it lost when f's error says so.
    template <class F>
    auto with_device(F&& f) -> decltype(f(std::declval<Device&>())) {
        if (lost()) return lost_error();
        const Ticket t = begin_call();
        auto r = f(device_);
        end_call(t, r ? nullptr : &r.error());
        return r;
    }

    /// Copies data to the tensor's bytes [offset, +size) (tensor of nbytes bytes).
    [[nodiscard]] Expected<void> set_tensor(const RemoteBuffer& b, const RpcTensor& t,
                                            uint64_t nbytes, Bytes data, uint64_t offset);
    /// Sets size bytes at offset to value.
    [[nodiscard]] Expected<void> fill_tensor(const RemoteBuffer& b, const RpcTensor& t,
                                             uint64_t nbytes, uint8_t value, uint64_t offset,
                                             uint64_t size);
    [[nodiscard]] Expected<void> get_tensor(const RemoteBuffer& b, const RpcTensor& t,
                                            uint64_t nbytes, std::span<std::byte> out,
                                            uint64_t offset);
    /// buffer_cpy_tensor into dst's buffer; false when the host cannot copy.
    [[nodiscard]] Expected<bool> copy_tensor(const RemoteBuffer& dst_buffer, const RpcTensor& src,
                                             const RpcTensor& dst);
    /// Runs the packed graph held in blob res_id (size bytes); the host's ggml_status.
    [[nodiscard]] Expected<ggml::Status> graph_compute(uint32_t res_id, uint64_t size);

    /// Shared memory for a caller's own use (the graph blob of a backend stream).
    [[nodiscard]] Expected<Shmem> create_shmem(size_t n);

    /// True once a call found the host gone, or timed out waiting for the host alone.
    [[nodiscard]] bool lost() const noexcept { return lost_.load(std::memory_order_acquire); }
    /// Calls of this remote now in flight (for tests and diagnostics).
    [[nodiscard]] int in_flight() const noexcept {
        return in_flight_.load(std::memory_order_acquire);
    }
    [[nodiscard]] Session<AnyTransport>& session() noexcept { return session_; }
    [[nodiscard]] const Logger& logger() const noexcept { return logger_; }
    [[nodiscard]] std::string_view transport_name() noexcept { return session_.transport().name(); }
    /// Largest piece of one set/get transfer (ggml's data blob size).
    [[nodiscard]] size_t chunk_size() const noexcept { return device_.options().chunk_size; }

private:
    template <class C>
    Expected<typename C::response> call(const typename C::request& req, Deadline deadline);
    // One transfer in pieces of chunk_size() through the staging blob: before() fills a
    // staged piece (set), after() empties it (get); both get the piece and its offset.
    template <class C, class Before, class After>
    Expected<void> chunked(const RpcTensor& t, uint64_t offset, uint64_t size, Before&& before,
                           After&& after);
    // A call in flight: when it began, and whether another call was in flight then.
    struct Ticket {
        int64_t start_ns;
        bool queued;
    };
    Ticket begin_call() noexcept;
    // Ends the call of t; err: its error, or null. Marks the remote lost on evidence.
    void end_call(const Ticket& t, const Error* err);
    static Unexpected lost_error();

    Session<AnyTransport> session_;
    ggml::DeviceOptions options_;
    Device device_;
    Logger logger_;
    std::atomic<bool> lost_{false};
    std::atomic<int> in_flight_{0};
    std::atomic<int64_t> last_reply_ns_{0}; // steady clock, when the host last answered
};

} // namespace apir::ggml_remote
