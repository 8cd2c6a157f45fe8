// LoopbackLink: an in-process transport whose other end is any LoopbackPeer.
//
// Shared memory is ordinary memory keyed by resource id. In inline mode the peer
// executes each command inside submit(); in threaded mode a host thread hands the
// submissions to the peer and the guest waits on the notification word (the same wait
// the DRM transport uses), woken by a futex when it had to block.
//
// The link knows nothing of apir::Host: apir::LoopbackTransport (apir/loopback.hpp,
// the host layer) is a link whose peer is this project's host, and what users make.
// A test can put a peer of its own at the other end:
//
//     struct Echo final : apir::LoopbackPeer {
//         explicit Echo(apir::HostMemory& m) : mem(m) {}
//         void execute(std::span<const std::byte> cmd) override { ... mem.notify(page, 0); }
//         apir::HostMemory& mem;
//     };
//     apir::LoopbackLink link([](apir::HostMemory& m) { return std::make_unique<Echo>(m); });
#pragma once

#include "apir/export.hpp"
#include "apir/host_memory.hpp"
#include "apir/log.hpp"
#include "apir/transport.hpp"

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

namespace apir {

/// The other end of a loopback link: executes command buffers, answering through the
/// link's HostMemory. It is also the link's diagnostics (TransportDiagnostics): what it
/// knows of a failed call beyond the return code (none by default).
class LoopbackPeer : public TransportDiagnostics {
public:
    virtual ~LoopbackPeer() = default;
    /// Executes one command buffer; a command the peer drops simply gets no reply. The
    /// link takes no lock around it: in inline mode guest threads call it at once, so a
    /// peer serializes its commands itself where it must (apir::Host does).
    virtual void execute(std::span<const std::byte> command) = 0;
    /// The same for bytes that are the peer's until it returns (the threaded link's
    /// queue slot): it may decode them in place instead of copying them first.
    virtual void execute_in_place(std::span<std::byte> command) { execute(command); }
    /// Subtracted by the peer from command types (331 in Venus transition mode).
    [[nodiscard]] virtual int32_t command_type_offset() const noexcept { return 0; }
    [[nodiscard]] std::string explain(CommandType, const Error&) override { return {}; }
};

/// Builds a link's peer over the link's memory (called once, by the constructor).
using LoopbackPeerFactory = std::function<std::unique_ptr<LoopbackPeer>(HostMemory&)>;

struct LoopbackLinkOptions {
    enum class Mode : uint8_t { inline_host, threaded };
    Mode mode = Mode::threaded;
    /// Most bytes of shared memory alive at once; create_shmem fails past it.
    size_t max_shmem_bytes = size_t{4} << 30;
    /// How long stop_host() and the destructor wait for the host thread to come back
    /// from the command it runs. Past it the thread is abandoned, never joined: it is
    /// detached, and what it uses (the peer and its backend, the shared memory, the
    /// ring) stays alive until it returns, then it frees them itself; if it never
    /// returns they are never freed. `logger` says so (a warning).
    std::chrono::milliseconds stop_grace{2000};
    /// The link's own messages (a host thread abandoned).
    Logger logger{stderr_sink, LogLevel::warn};
};

/// A moved-from LoopbackLink fails every call with DISCONNECTED and is named
/// "moved-from". A link without a peer (null factory or null peer) fails every
/// submit with DISCONNECTED.
class APIR_EXPORT LoopbackLink {
public:
    explicit LoopbackLink(LoopbackPeerFactory make_peer, LoopbackLinkOptions options = {});
    LoopbackLink(LoopbackLink&&) noexcept;
    LoopbackLink& operator=(LoopbackLink&&) noexcept;
    ~LoopbackLink();

    [[nodiscard]] Expected<Shmem> create_shmem(size_t size);
    /// In threaded mode, waits at most until the deadline for room in the queue.
    [[nodiscard]] Expected<void> submit(std::span<const std::byte> command, uint32_t reply_res_id,
                                        Deadline deadline);
    [[nodiscard]] Expected<uint32_t> wait_reply(const Shmem& page, const WaitPolicy& policy,
                                                Deadline deadline);
    [[nodiscard]] int32_t command_type_offset() const noexcept;
    [[nodiscard]] std::string_view name() const noexcept;

    /// The peer at the other end (null when moved from or without one).
    [[nodiscard]] LoopbackPeer* peer() noexcept;
    /// The peer, as what it can tell of a failed call (Session adds it to the error).
    [[nodiscard]] TransportDiagnostics* diagnostics() noexcept;
    /// Stops the host thread as if the host died: waits and submits then fail with
    /// DISCONNECTED. (Inline mode: later submits fail the same way.) Waits at most
    /// `stop_grace` for a host thread inside a command (see there).
    void stop_host();
    /// Whether the host thread was abandoned (it did not come back within stop_grace).
    [[nodiscard]] bool host_abandoned() const noexcept;
    /// Shared-memory blobs alive now, and their bytes.
    [[nodiscard]] size_t shmem_count() const noexcept;
    [[nodiscard]] size_t shmem_bytes() const noexcept;

    struct Impl; // opaque
    /// Destroys the link's state, or hands it to an abandoned host thread.
    struct APIR_EXPORT ImplDeleter {
        void operator()(Impl* impl) const noexcept;
    };

private:
    std::unique_ptr<Impl, ImplDeleter> impl_;
};

static_assert(Transport<LoopbackLink> && HasDiagnostics<LoopbackLink>);

} // namespace apir
