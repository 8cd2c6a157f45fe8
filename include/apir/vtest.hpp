// VtestTransport: APIR over virglrenderer's vtest socket, the real host without a VM.
//
// virglrenderer's test server (virgl_test_server) serves the virtio-gpu renderer over a
// Unix socket with the vtest protocol. A client that speaks it drives virglrenderer's
// APIR host exactly as a guest does through the kernel: the same command buffers, reply
// pages and backend library (docs/PROTOCOL.md, "vtest"; docs/VTEST.md).
//
//     apir::VtestOptions o;
//     o.socket_path = "/run/user/1000/vtest.sock";   // virgl_test_server --socket-path
//     auto t = apir::VtestTransport::open(std::move(o));
//     if (!t) { fmt::print("{}\n", t.error()); return 1; }  // says what to do
//     apir::Session s(std::move(*t));
//     if (auto c = s.connect(); !c) fmt::print("{}\n", c.error());
//
// Shared memory is a HOST3D blob whose fd the server passes over the socket; a call is
// one SUBMIT_CMD2. The host runs the command while it reads the message and stores the
// notification word without a message or a wake-up, so a wait spins on the word a
// little (yielding the CPU between looks: the server may be waiting for the waiter's
// CPU), then sends a PING: the server answers messages in order, so once the PING's
// answer is in, the command is done, and a word still 0 means the host dropped it.
//
// Thread-safe: writes and reply reads of the connection take one lock, acquired with
// the caller's deadline; the socket is non-blocking and every wait on it is a poll()
// cut to the deadline, so a server that stops reading or answering never holds a
// caller past its deadline. Every wait (on the socket or the lock) is also cut in
// slices of 100 ms that look at a `closing` flag: a call with no deadline (a ggml
// graph_compute's default) stuck behind a silent server ends with DISCONNECTED once
// close() or the destructor shuts the connection down. A lost connection fails every
// later call with DISCONNECTED.
#pragma once

#include "apir/error.hpp"
#include "apir/export.hpp"
#include "apir/log.hpp"
#include "apir/transport.hpp"

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>

namespace apir {

/// The environment variable naming the server's socket when VtestOptions::socket_path is
/// empty (the name virglrenderer's own clients read); its default is vtest_default_socket.
inline constexpr const char* vtest_socket_env_var = "VTEST_SOCKET_NAME";
inline constexpr const char* vtest_default_socket = "/tmp/.virgl_test";

struct VtestOptions {
    /// The server's Unix socket; empty: $VTEST_SOCKET_NAME, else /tmp/.virgl_test.
    std::string socket_path;
    /// How long open() may take: connect, version, capset and context creation.
    std::chrono::nanoseconds connect_timeout = std::chrono::seconds(5);
    /// The longest a blob's creation (create_shmem) waits for the server (then TIMEOUT);
    /// a blob's release never waits (its RESOURCE_UNREF goes out with the next message
    /// when the server is not reading).
    std::chrono::nanoseconds io_timeout = std::chrono::seconds(10);
    /// The capset the context is created on (APIR, 10).
    uint32_t capset = capset_apir;
    /// The name the client gives itself (CREATE_RENDERER), seen in the server's log.
    std::string client_name = "apir";
    Logger logger;
};

/// Counters of one connection.
struct VtestStats {
    uint64_t submits = 0;       ///< SUBMIT_CMD2 sent
    uint64_t pings = 0;         ///< PING barriers sent
    uint64_t spin_replies = 0;  ///< waits answered while spinning on the word
    uint64_t ping_replies = 0;  ///< waits answered after a PING barrier
    uint64_t blocked = 0;       ///< waits that went to the PING barrier at once (blocked,
                                ///< ArrivalForecast::Rest::block, or a reply the command's
                                ///< forecast is sure comes after the longest look): among
                                ///< ping_replies
    uint64_t dropped = 0;       ///< commands the host answered with no reply
    uint64_t blobs_created = 0; ///< RESOURCE_CREATE_BLOB that succeeded
    uint64_t blobs_released = 0;
    size_t live_blobs = 0;
    size_t live_bytes = 0;
};

/// A moved-from VtestTransport fails every call with DISCONNECTED.
class APIR_EXPORT VtestTransport final {
public:
    /// Connects, negotiates the vtest protocol (version 3 or later), checks that the
    /// server offers the capset, and creates the context. Each failure names the step
    /// and what to do: NO_DEVICE (no server at the path: start virgl_test_server),
    /// VERSION_MISMATCH (protocol older than 3), UNSUPPORTED (capset not offered: a
    /// server built without APIR), DISCONNECTED (context refused), TIMEOUT.
    [[nodiscard]] static Expected<VtestTransport> open(VtestOptions options = {});

    VtestTransport(VtestTransport&&) noexcept;
    VtestTransport& operator=(VtestTransport&&) noexcept;
    /// Unmaps every blob and closes the socket (the host's context ends). Calls already
    /// inside the transport on other threads may be waiting (a wait with no deadline
    /// included): it first does close(), then waits for them to return, which each does
    /// within about 100 ms. A call must not start once destruction has begun.
    /// Assigning to a transport ends its old connection the same way.
    ~VtestTransport();

    /// Shuts the connection down from any thread: every call waiting on the socket or
    /// for the connection's lock returns DISCONNECTED within about 100 ms (at once when
    /// it is in poll: the socket is shut down), and every later call fails with
    /// DISCONNECTED. Blobs stay mapped until released or the transport is destroyed.
    void close() noexcept;

    /// A mappable HOST3D blob of at least size bytes (rounded to 16 KiB). Its answer
    /// comes after those the server owes (PINGs behind a long command): they, the
    /// connection's lock and the blob's own answer are waited for until the deadline
    /// (steady clock) or VtestOptions::io_timeout, the sooner (then TIMEOUT, the
    /// connection intact: a later holder reads the late answer and releases its blob).
    [[nodiscard]] Expected<Shmem> create_shmem(size_t size);
    [[nodiscard]] Expected<Shmem> create_shmem(size_t size, Deadline deadline);
    /// SUBMIT_CMD2 with one batch, no ring index, no sync objects. TIMEOUT when the
    /// server does not take the bytes (or the lock is not free) before the deadline.
    [[nodiscard]] Expected<void> submit(std::span<const std::byte> command, uint32_t reply_res_id,
                                        Deadline deadline);
    /// Spins on the word at most 50 µs, yielding the CPU between looks (a fixed_poll
    /// policy polls instead: apir::wait_for_reply), then the PING barrier. A command the
    /// host dropped: UNKNOWN_RESOURCE at once; the server gone: DISCONNECTED.
    [[nodiscard]] Expected<uint32_t> wait_reply(const Shmem& page, const WaitPolicy& policy,
                                                Deadline deadline);
    /// One PING round trip (the floor of a call's latency over this socket).
    [[nodiscard]] Expected<void> ping(Deadline deadline);
    /// 0: the APIR capset takes the plain command types.
    [[nodiscard]] int32_t command_type_offset() const noexcept { return 0; }
    /// "vtest".
    [[nodiscard]] std::string_view name() const noexcept;

    /// The vtest protocol version the server granted.
    [[nodiscard]] uint32_t protocol_version() const noexcept;
    [[nodiscard]] const std::string& socket_path() const noexcept;
    [[nodiscard]] VtestStats stats() const noexcept;

    struct Impl; // opaque

private:
    explicit VtestTransport(std::unique_ptr<Impl> impl) noexcept;
    std::unique_ptr<Impl> impl_;
};

static_assert(Transport<VtestTransport> && HasShmemDeadline<VtestTransport>);

} // namespace apir
