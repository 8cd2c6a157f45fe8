// LoopbackTransport: an in-process transport whose other end is apir::Host.
//
// Shared memory is ordinary memory keyed by resource id. In inline mode the host
// executes each command inside submit(); in threaded mode a host thread serves the
// submissions and the guest waits on the notification word (the same wait the DRM
// transport uses), woken by a futex when it had to block.
//
//     apir::LoopbackOptions opts;
//     opts.host.config["apir.load_library.path"] = "libmy-backend.so";
//     apir::Session<apir::LoopbackTransport> s(apir::LoopbackTransport(opts));
//     if (auto r = s.connect(); !r) fmt::print("{}\n", r.error());
#pragma once

#include "apir/export.hpp"
#include "apir/host.hpp"
#include "apir/transport.hpp"

#include <functional>
#include <memory>
#include <string_view>

namespace apir {

struct LoopbackOptions {
    enum class Mode : uint8_t { inline_host, threaded };
    Mode mode = Mode::threaded;
    HostOptions host;
    /// Most bytes of shared memory alive at once; create_shmem fails past it.
    size_t max_shmem_bytes = size_t{4} << 30;
    /// Commands queued for the host thread before submit() waits (until its deadline).
    size_t queue_depth = 64;
    /// The longest the idle host thread spins for the next command before it sleeps;
    /// it spins as long as the gaps between commands have lately been short enough
    /// for a spin to catch the next one (learned, apir::SpinBudget), else not at all.
    std::chrono::nanoseconds host_spin = std::chrono::microseconds(200);
    /// Test hook: called with each submitted command; return false to drop it
    /// (the host never sees it, so it never answers).
    std::function<bool(std::span<const std::byte>)> deliver;
};

/// A moved-from LoopbackTransport fails every call with DISCONNECTED and is named
/// "moved-from" (host() must not be called on it).
class APIR_EXPORT LoopbackTransport final {
public:
    explicit LoopbackTransport(LoopbackOptions options = {});
    LoopbackTransport(LoopbackTransport&&) noexcept;
    LoopbackTransport& operator=(LoopbackTransport&&) noexcept;
    ~LoopbackTransport();

    [[nodiscard]] Expected<Shmem> create_shmem(size_t size);
    /// In threaded mode, waits at most until the deadline for room in the queue.
    [[nodiscard]] Expected<void> submit(std::span<const std::byte> command, Deadline deadline);
    [[nodiscard]] Expected<uint32_t> wait_reply(const Shmem& page, const WaitPolicy& policy,
                                                Deadline deadline);
    [[nodiscard]] int32_t command_type_offset() const noexcept;
    [[nodiscard]] std::string_view name() const noexcept;

    /// The host at the other end.
    [[nodiscard]] Host& host() noexcept;
    /// The in-process host's reason for the last failed LOADLIBRARY (Session adds it to
    /// the error's detail).
    [[nodiscard]] std::string load_library_failure();
    /// Stops the host thread as if the host died: waits and submits then fail with
    /// DISCONNECTED. (Inline mode: later submits fail the same way.)
    void stop_host();
    /// Shared-memory blobs alive now, and their bytes.
    [[nodiscard]] size_t shmem_count() const noexcept;
    [[nodiscard]] size_t shmem_bytes() const noexcept;

    struct Impl; // opaque

private:
    std::unique_ptr<Impl> impl_;
};

static_assert(Transport<LoopbackTransport>);

} // namespace apir
