// VtestTransport: the vtest socket protocol (docs/PROTOCOL.md, "vtest").
#include "apir/vtest.hpp"

#include "apir/internal/spin.hpp"
#include "apir/internal/unique_handle.hpp"
#include "apir/reply_page.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <climits>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <mutex>
#include <optional>
#include <thread>
#include <unordered_map>
#include <vector>

#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

namespace apir {

using namespace std::chrono;

namespace {

// vtest command ids (the server's vtest_protocol.h numbering).
namespace cmd {
constexpr uint32_t resource_unref = 3;
constexpr uint32_t create_renderer = 8;
constexpr uint32_t ping_protocol_version = 10;
constexpr uint32_t protocol_version = 11;
constexpr uint32_t get_capset = 16;
constexpr uint32_t context_init = 17;
constexpr uint32_t resource_create_blob = 18;
constexpr uint32_t submit_cmd2 = 24;
} // namespace cmd

constexpr uint32_t wanted_version = 4;
constexpr uint32_t min_version = 3; // blobs, CONTEXT_INIT and SUBMIT_CMD2
constexpr uint32_t blob_mem_host3d = 2;
constexpr uint32_t blob_flag_mappable = 1;
// The longest command buffer sent: the session's are 4 KiB; bulk data goes in blobs.
constexpr size_t max_command_bytes = size_t{16} << 20;
// The longest capset answer read (the APIR capset is 6 words).
constexpr uint32_t max_capset_words = 1024;
// How long a wait spins on the word before the PING barrier, at most: a small
// FORWARD completes in about 14 µs on the real host, a PING round trip takes 16 µs.
constexpr nanoseconds max_spin_window = microseconds(50);
// How often a waiter blocked on the connection's lock looks at its word again: the lock's
// holder may be reading the answer to a PING sent after a long command that ran after
// the waiter's.
constexpr microseconds lock_slice{100};
// The longest single wait on the socket or the lock: a waiter with no deadline looks
// at the transport's `closing` flag at least this often.
constexpr milliseconds close_slice{100};

using PosixFd = detail::PosixFd;
using Mapping = detail::PosixMapping;

// What an I/O step ended with.
enum class Io : uint8_t { ok, timeout, eof, error, closed };
struct IoResult {
    Io kind = Io::ok;
    int err = 0;
    size_t done = 0; // bytes moved
};

// The time left before a deadline, on the wait's clock; nullopt: no deadline.
std::optional<nanoseconds> left(Deadline d, const WaitClock& clock) {
    if (d.is_never()) return std::nullopt;
    return std::max(nanoseconds::zero(), duration_cast<nanoseconds>(d.time() - clock.now()));
}

enum class Ready : uint8_t { yes, timeout, closed };

// Waits until fd is ready for events, the deadline, or `stop` set (looked at every
// close_slice: a wait with no deadline still ends when the transport is closed).
Ready wait_ready(int fd, short events, Deadline d, const WaitClock& clock,
                 const std::atomic<bool>* stop) {
    for (;;) {
        if (stop && stop->load(std::memory_order_acquire)) return Ready::closed;
        auto rest = left(d, clock);
        if (rest && *rest == nanoseconds::zero()) return Ready::timeout;
        if (stop) rest = std::min(rest.value_or(close_slice), nanoseconds(close_slice));
        pollfd p{fd, events, 0};
        timespec ts{};
        if (rest) {
            ts.tv_sec = static_cast<time_t>(duration_cast<seconds>(*rest).count());
            ts.tv_nsec = static_cast<long>((*rest % seconds(1)).count());
        }
        const int r = ::ppoll(&p, 1, rest ? &ts : nullptr, nullptr);
        if (r > 0) return Ready::yes; // readable, writable, or an error/hang-up the I/O reports
        if (r < 0 && errno != EINTR) return Ready::yes;
    }
}

IoResult not_ready(Ready w, size_t done) {
    return {w == Ready::closed ? Io::closed : Io::timeout, 0, done};
}

// Sends all bytes; stops at the deadline (done < size then).
IoResult send_all(int fd, std::span<const std::byte> bytes, Deadline d, const WaitClock& clock,
                  const std::atomic<bool>* stop = nullptr) {
    IoResult r;
    while (r.done < bytes.size()) {
        const ssize_t n =
            ::send(fd, bytes.data() + r.done, bytes.size() - r.done, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0) {
            r.done += static_cast<size_t>(n);
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (const Ready w = wait_ready(fd, POLLOUT, d, clock, stop); w != Ready::yes)
                return not_ready(w, r.done);
            continue;
        }
        const int e = n < 0 ? errno : EPIPE;
        return {e == EPIPE || e == ECONNRESET ? Io::eof : Io::error, e, r.done};
    }
    return r;
}

// Receives exactly bytes.size() bytes (or stops at the deadline). When fd_out is given,
// a file descriptor passed with the bytes (SCM_RIGHTS) is stored there; any other fd
// that arrives is closed by the kernel or here.
IoResult recv_exact(int fd, std::span<std::byte> bytes, Deadline d, const WaitClock& clock,
                    PosixFd* fd_out = nullptr, const std::atomic<bool>* stop = nullptr) {
    IoResult r;
    while (r.done < bytes.size()) {
        iovec iov{bytes.data() + r.done, bytes.size() - r.done};
        alignas(cmsghdr) std::array<char, CMSG_SPACE(sizeof(int) * 4)> control{};
        msghdr msg{};
        msg.msg_iov = &iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.data();
        msg.msg_controllen = control.size();
        const ssize_t n = ::recvmsg(fd, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
        if (n > 0) {
            for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
                if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
                const size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
                for (size_t i = 0; i < count; ++i) {
                    int got = -1;
                    std::memcpy(&got, CMSG_DATA(c) + i * sizeof(int), sizeof got);
                    if (fd_out && !*fd_out)
                        fd_out->reset(got);
                    else
                        (void)::close(got); // not asked for: never leak it
                }
            }
            r.done += static_cast<size_t>(n);
            continue;
        }
        if (n == 0) return {Io::eof, 0, r.done};
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            if (const Ready w = wait_ready(fd, POLLIN, d, clock, stop); w != Ready::yes)
                return not_ready(w, r.done);
            continue;
        }
        return {errno == ECONNRESET ? Io::eof : Io::error, errno, r.done};
    }
    return r;
}

void put_words(std::vector<std::byte>& out, std::initializer_list<uint32_t> words) {
    for (uint32_t w : words) {
        std::byte b[4];
        std::memcpy(b, &w, 4);
        out.insert(out.end(), b, b + 4);
    }
}

uint32_t word_at(std::span<const std::byte> bytes, size_t i) {
    uint32_t w = 0;
    std::memcpy(&w, bytes.data() + i * 4, 4);
    return w;
}

std::string ms_text(nanoseconds d) {
    return fmt::format("{:.0f} ms", duration<double, std::milli>(d).count());
}

} // namespace

struct APIR_LOCAL VtestTransport::Impl final : ShmemOwner {
    // What this transport's Shmems release through; cut first in the destructor.
    const std::shared_ptr<ShmemLink> shmem_link = ShmemLink::make(*this);
    Impl(VtestOptions o, PosixFd f) : options(std::move(o)), fd(std::move(f)) {}
    ~Impl() {
        shmem_link->disown(); // a Shmem destroyed after the transport does nothing
        std::lock_guard lk(blobs_mu);
        if (!live.empty())
            options.logger.warn("vtest: {} shared-memory blobs outlive their transport",
                                live.size());
        // The mappings go with `live`, then the socket: the server ends the context.
    }

    // --- the connection's state; everything below is guarded by io_mu
    VtestOptions options;
    PosixFd fd;
    uint32_t version = 0;
    std::timed_mutex io_mu;
    std::optional<Error> broken; // set once: every later call fails with it
    std::atomic<bool> is_broken{false};
    // close(): set once; every wait looks at it at least every close_slice and ends
    // with DISCONNECTED. Not guarded by io_mu (a closer never waits for the lock).
    std::atomic<bool> closing{false};
    // Calls inside the transport; the destructor waits for them to leave.
    std::mutex calls_mu;
    std::condition_variable calls_cv;
    uint32_t calls = 0;
    std::vector<std::byte> submit_buf; // the SUBMIT_CMD2 being sent; under io_mu
    uint64_t sent = 0;                 // SUBMIT_CMD2 fully sent
    uint64_t completed = 0;            // submits the host is known to have executed
    // The answers the server owes, in the order it sends them: a PING's (covering the
    // submits sent before it) or a RESOURCE_CREATE_BLOB's (whose creator may have stopped
    // waiting: the holder that reads it then releases the blob).
    struct Owed {
        bool blob = false;
        uint64_t covers = 0; // a PING's: `sent` when it went out
    };
    std::deque<Owed> owed;
    std::array<std::byte, 12> partial{}; // an answer read in part by an earlier holder
    size_t partial_len = 0;

    std::atomic<uint64_t> sent_count{0}; // `sent`, readable without the lock
    std::atomic<uint64_t> n_pings{0}, n_spin{0}, n_ping_replies{0}, n_dropped{0}, n_blocked{0};
    std::atomic<uint64_t> n_created{0}, n_released{0};

    // RESOURCE_UNREFs of released blobs still to go (release never waits for io_mu or
    // for room in the socket); sent before the next message.
    std::mutex unref_mu;
    std::vector<uint32_t> unref_pending;
    void defer_unref(uint32_t res_id) {
        std::lock_guard lk(unref_mu);
        unref_pending.push_back(res_id);
    }

    mutable std::mutex blobs_mu;
    std::unordered_map<uint32_t, Mapping> live;
    size_t live_bytes = 0;

    // Caller holds io_mu. The stream is unusable from now on (a message was cut, the
    // server left or sent garbage): every later call fails with DISCONNECTED.
    Error break_connection(std::string why, int err = 0) {
        if (!broken) {
            Error e(Errc::disconnected,
                    fmt::format("vtest server at {}: {}", options.socket_path, why));
            if (err) e.with_errno(err);
            broken = std::move(e);
            is_broken.store(true, std::memory_order_release);
            (void)::shutdown(fd.get(), SHUT_RDWR);
            options.logger.warn("vtest: connection lost: {}", why);
        }
        return *broken;
    }

    Error io_error(const IoResult& r, std::string_view what) {
        if (r.kind == Io::closed || closing.load(std::memory_order_acquire))
            return break_connection(fmt::format("the transport was closed during {}", what));
        if (r.kind == Io::eof)
            return break_connection(fmt::format("the server closed the "
                                                "connection during {}",
                                                what),
                                    r.err);
        return break_connection(fmt::format("{} failed: {}", what, std::strerror(r.err)), r.err);
    }

    // Caller holds io_mu. Sends one whole message, after the RESOURCE_UNREFs of released
    // blobs still to go. A message not begun by the deadline leaves the stream intact
    // (the UNREFs stay to go); one begun is finished until `finish_by` where given (a
    // release, which sends only what the socket takes at once: io_timeout), and one cut
    // breaks the stream (its rest cannot be taken back).
    Expected<void> send_message(std::span<const std::byte> msg, Deadline d, const WaitClock& clk,
                                std::string_view what,
                                std::optional<Deadline> finish_by = std::nullopt) {
        if (broken) return fail(*broken);
        std::vector<uint32_t> unrefs;
        {
            std::lock_guard lk(unref_mu);
            unrefs.swap(unref_pending);
        }
        std::vector<std::byte> joined;
        std::span<const std::byte> out = msg;
        if (!unrefs.empty()) {
            for (uint32_t id : unrefs)
                put_words(joined, {1, cmd::resource_unref, id});
            joined.insert(joined.end(), msg.begin(), msg.end());
            out = joined;
        }
        IoResult r = send_all(fd.get(), out, d, clk, &closing);
        if (r.kind == Io::timeout && r.done > 0 && finish_by) {
            IoResult rest = send_all(fd.get(), out.subspan(r.done), *finish_by, clk, &closing);
            rest.done += r.done;
            r = rest;
        }
        if (r.kind == Io::ok) return {};
        if (r.kind == Io::timeout) {
            if (r.done > 0) {
                (void)break_connection(fmt::format("{} cut by its deadline", what));
            } else if (!unrefs.empty()) {
                std::lock_guard lk(unref_mu);
                unref_pending.insert(unref_pending.end(), unrefs.begin(), unrefs.end());
            }
            return fail(Errc::timeout,
                        fmt::format("vtest: the server at {} did not take {} before the deadline "
                                    "(it stopped reading)",
                                    options.socket_path, what));
        }
        return fail(io_error(r, what));
    }

    // Caller holds io_mu. Reads the oldest answer owed (kept across holders when the
    // deadline cuts it). A blob's answer goes to fd_out and id_out where given (its
    // creator, which reads it first thing); else its creator stopped waiting, and the
    // blob is released.
    Expected<void> read_answer(Deadline d, const WaitClock& clk, PosixFd* fd_out = nullptr,
                               uint32_t* id_out = nullptr) {
        if (broken) return fail(*broken);
        const Owed o = owed.front();
        const size_t want = o.blob ? 12 : 8;
        const std::string_view what = o.blob ? "RESOURCE_CREATE_BLOB" : "a PING";
        auto cut = [&] {
            return fail(Errc::timeout,
                        fmt::format("vtest: no answer to {} from the server at {} before the "
                                    "deadline (the host is busy or stopped)",
                                    what, options.socket_path));
        };
        if (partial_len < want) {
            std::span<std::byte> rest(partial.data() + partial_len, want - partial_len);
            const IoResult r = recv_exact(fd.get(), rest, d, clk, nullptr, &closing);
            partial_len += r.done;
            if (r.kind == Io::timeout) return cut();
            if (r.kind != Io::ok) return fail(io_error(r, what));
        }
        const uint32_t len = word_at(partial, 0), id = word_at(partial, 1);
        if (!o.blob) {
            partial_len = 0;
            if (len != 0 || id != cmd::ping_protocol_version)
                return fail(break_connection(
                    fmt::format("answer ({} words, id {}) where a PING's (0 words, id {}) was due",
                                len, id, cmd::ping_protocol_version)));
            completed = std::max(completed, o.covers);
            owed.pop_front();
            return {};
        }
        if (len != 1 || id != cmd::resource_create_blob)
            return fail(break_connection(
                fmt::format("answer ({} words, id {}) to RESOURCE_CREATE_BLOB", len, id)));
        // Then exactly the one byte that carries the fd: a longer read could swallow it
        // and lose the fd.
        std::array<std::byte, 1> carrier{};
        PosixFd got;
        const IoResult r = recv_exact(fd.get(), carrier, d, clk, &got, &closing);
        if (r.kind == Io::timeout) return cut();
        if (r.kind != Io::ok) return fail(io_error(r, "RESOURCE_CREATE_BLOB's fd"));
        partial_len = 0;
        owed.pop_front();
        const uint32_t res_id = word_at(partial, 2);
        if (fd_out) {
            *fd_out = std::move(got);
            *id_out = res_id;
        } else {
            defer_unref(res_id); // `got` closes here
        }
        return {};
    }

    // Caller holds io_mu. Sends a PING covering every submit sent so far.
    Expected<void> send_ping(Deadline d, const WaitClock& clk) {
        std::vector<std::byte> m;
        put_words(m, {0, cmd::ping_protocol_version});
        APIR_TRY(send_message(m, d, clk, "a PING"));
        owed.push_back({false, sent});
        n_pings.fetch_add(1, std::memory_order_relaxed);
        return {};
    }

    // Caller holds io_mu. Reads the answers owed before a new request's.
    Expected<void> drain(Deadline d, const WaitClock& clk) {
        while (!owed.empty())
            APIR_TRY(read_answer(d, clk));
        return {};
    }

    // Locks io_mu before the deadline (real time), or TIMEOUT; DISCONNECTED once the
    // transport is closed. Waits in slices of close_slice, so no deadline (never) still
    // ends when the holder is stuck and the transport is closed.
    Expected<std::unique_lock<std::timed_mutex>> lock(Deadline d) {
        std::unique_lock lk(io_mu, std::defer_lock);
        for (;;) {
            if (closing.load(std::memory_order_acquire)) return fail(closed_error());
            auto until = Clock::now() + close_slice;
            if (!d.is_never() && d.time() < until) until = d.time();
            if (lk.try_lock_until(until)) break;
            if (!d.is_never() && d.expired())
                return fail(Errc::timeout, "vtest: the connection stayed busy until the deadline");
        }
        if (closing.load(std::memory_order_acquire)) {
            (void)break_connection("the transport was closed");
            return fail(closed_error());
        }
        return lk;
    }

    Error closed_error() const {
        return Error(Errc::disconnected, fmt::format("vtest server at {}: the transport was closed",
                                                     options.socket_path));
    }

    // Any thread, any time: every waiter (in poll, or for the lock) returns DISCONNECTED
    // within close_slice; shutdown() wakes the ones in poll at once.
    void close() noexcept {
        if (closing.exchange(true, std::memory_order_acq_rel)) return;
        is_broken.store(true, std::memory_order_release);
        (void)::shutdown(fd.get(), SHUT_RDWR);
    }

    // Counts a call inside the transport (the destructor waits for it to leave).
    struct Call {
        Impl& impl;
        explicit Call(Impl& i) : impl(i) {
            std::lock_guard lk(impl.calls_mu);
            ++impl.calls;
        }
        ~Call() {
            std::lock_guard lk(impl.calls_mu);
            if (--impl.calls == 0) impl.calls_cv.notify_all();
        }
        Call(const Call&) = delete;
        Call& operator=(const Call&) = delete;
    };

    // close(), then wait for the calls inside to return (each does within close_slice
    // plus the time to unwind).
    void close_and_wait() noexcept {
        close();
        std::unique_lock lk(calls_mu);
        calls_cv.wait(lk, [&] { return calls == 0; });
    }

    Expected<Shmem> create_shmem(size_t size, Deadline caller) {
        if (size == 0) return fail(Errc::invalid_argument, "shared memory of 0 bytes");
        if (size > SIZE_MAX - shmem_alignment)
            return fail(Errc::out_of_memory, fmt::format("{} bytes of shared memory", size));
        const size_t rounded = (size + shmem_alignment - 1) & ~(shmem_alignment - 1);
        const WaitClock& clk = WaitClock::system();
        // The blob's answer comes after the answers owed, which may wait for a long
        // command. The lock, those answers and the blob's own are waited for until the
        // caller's deadline (or io_timeout, the sooner); a wait cut there leaves the stream
        // intact, and the holder that reads the blob's answer later releases it.
        const Deadline d = Deadline::sooner(caller, Deadline::after(options.io_timeout));
        PosixFd blob_fd;
        uint32_t res_id = 0;
        {
            auto lk = lock(d);
            if (!lk) return Unexpected{std::move(lk).error()};
            APIR_TRY(drain(d, clk));
            std::vector<std::byte> m;
            const uint64_t n = rounded;
            put_words(m, {6, cmd::resource_create_blob, blob_mem_host3d, blob_flag_mappable,
                          static_cast<uint32_t>(n), static_cast<uint32_t>(n >> 32), 0, 0});
            APIR_TRY(send_message(m, d, clk, "RESOURCE_CREATE_BLOB"));
            owed.push_back({true, 0});
            APIR_TRY(read_answer(d, clk, &blob_fd, &res_id));
            if (!blob_fd) {
                defer_unref(res_id);
                return fail(Errc::device_error,
                            fmt::format("vtest: blob {} came without its fd (SCM_RIGHTS)", res_id));
            }
        }
        // The server is untrusted: it could shrink the file under the mapping, and the
        // next touch of a page past the end would be SIGBUS. virglrenderer's blobs are
        // memfds created with sealing allowed and no seal set: seal them against
        // shrinking here, before the size is checked (a shrink done before the seal
        // shows in the size). An fd that cannot be sealed is refused.
        const int sealed = ::fcntl(blob_fd.get(), F_ADD_SEALS, F_SEAL_SHRINK);
        const int seal_err = errno;
        const int seals = ::fcntl(blob_fd.get(), F_GET_SEALS);
        if (sealed != 0 && (seals < 0 || (seals & F_SEAL_SHRINK) == 0)) {
            const int e = seal_err;
            release_remote(res_id);
            return fail(Error(Errc::device_error,
                              fmt::format("vtest: blob {}'s fd cannot be sealed against "
                                          "shrinking ({}): the server could truncate it under "
                                          "the mapping; apir needs a memfd with sealing allowed",
                                          res_id, std::strerror(e)))
                            .with_errno(e));
        }
        struct stat st {};
        if (::fstat(blob_fd.get(), &st) != 0 || st.st_size < 0 ||
            static_cast<uint64_t>(st.st_size) < rounded) {
            release_remote(res_id);
            return fail(Errc::device_error,
                        fmt::format("vtest: blob {}'s fd holds {} bytes, {} were asked", res_id,
                                    static_cast<long long>(st.st_size), rounded));
        }
        void* addr = ::mmap(nullptr, rounded, PROT_READ | PROT_WRITE, MAP_SHARED, blob_fd.get(), 0);
        if (addr == MAP_FAILED) {
            const int e = errno;
            release_remote(res_id);
            return fail(Error(e == ENOMEM ? Errc::out_of_memory : Errc::device_error,
                              fmt::format("vtest: mmap of blob {} ({} bytes): {}", res_id, rounded,
                                          std::strerror(e)))
                            .with_errno(e));
        }
        Mapping mapping({addr, rounded});
        std::span<std::byte> bytes(mapping.get().data(), rounded);
        {
            std::lock_guard lk(blobs_mu);
            if (live.count(res_id)) {
                // Two live blobs with one id: the server reused an id we still hold.
                return fail(Errc::decode_bad_value,
                            fmt::format("vtest: the server gave resource id {} twice", res_id));
            }
            live.emplace(res_id, std::move(mapping));
            live_bytes += rounded;
        }
        n_created.fetch_add(1, std::memory_order_relaxed);
        return Shmem(shmem_link, res_id, bytes);
    }

    // Never waits for the server: the RESOURCE_UNREF goes out now where the connection is
    // free and the socket has room, else with the next message sent (send_message). The
    // server frees every blob of the context when the connection ends, so one still to go
    // then is not lost.
    void release_remote(uint32_t res_id) noexcept {
        try {
            defer_unref(res_id);
            std::unique_lock lk(io_mu, std::try_to_lock);
            if (!lk.owns_lock() || broken || closing.load(std::memory_order_acquire)) return;
            if (auto r = send_message({}, Deadline::at(Clock::now()), WaitClock::system(),
                                      "RESOURCE_UNREF", Deadline::after(options.io_timeout));
                !r && r.error() != Errc::timeout)
                options.logger.debug("vtest: RESOURCE_UNREF {}: {}", res_id, r.error());
        } catch (...) { // allocation failure: the server frees the blob with the context
        }
    }

    // --- ShmemOwner. The server runs messages in order: a command sent before the
    // UNREF has run when the host drops the blob, so the blob is released at once.
    void release_shmem(uint32_t res_id) noexcept override {
        const Call in(*this);
        Mapping doomed;
        {
            std::lock_guard lk(blobs_mu);
            auto it = live.find(res_id);
            if (it == live.end()) return;
            live_bytes -= it->second.get().size;
            doomed = std::move(it->second);
            live.erase(it);
        }
        n_released.fetch_add(1, std::memory_order_relaxed);
        if (!is_broken.load(std::memory_order_acquire)) release_remote(res_id);
    }

    Expected<void> submit(std::span<const std::byte> command, Deadline d) {
        if (command.size() > max_command_bytes)
            return fail(Errc::invalid_argument,
                        fmt::format("{} byte command exceeds the vtest limit of {}", command.size(),
                                    max_command_bytes));
        const uint32_t words = static_cast<uint32_t>((command.size() + 3) / 4);
        auto lk = lock(d);
        if (!lk) return Unexpected{std::move(lk).error()};
        // One batch: flags 0 (no ring index: APIR has no fences), the command at word 9
        // of the payload, no sync objects. Built in a buffer kept under io_mu: the one
        // copy of the command before the socket's, and no allocation once it is large
        // enough.
        std::vector<std::byte>& m = submit_buf;
        m.clear();
        put_words(m, {9 + words, cmd::submit_cmd2, 1, 0, 9, words, 9 + words, 0, 0, 0, 0});
        m.insert(m.end(), command.begin(), command.end());
        m.resize(m.size() + (size_t{words} * 4 - command.size()));
        APIR_TRY(send_message(m, d, WaitClock::system(), "SUBMIT_CMD2"));
        ++sent;
        sent_count.store(sent, std::memory_order_release);
        return {};
    }

    Expected<uint32_t> dropped_or(std::span<std::byte> page, Error e) {
        const uint32_t w = notification_word(page).load(std::memory_order_acquire);
        if (w != 0) return w - 1;
        return fail(std::move(e));
    }

    Expected<uint32_t> wait_reply(const Shmem& page, const WaitPolicy& policy, Deadline deadline) {
        if (page.size() < reply_header_size)
            return fail(Errc::invalid_argument, "reply page too small");
        auto bytes = page.bytes();
        // Every command sent before this wait, the caller's among them.
        const uint64_t mine = sent_count.load(std::memory_order_acquire);
        const WaitClock& clk = policy.time();

        // 1. Look at the word, yielding the CPU between looks (the server is another
        // process of this machine, and the scheduler may have put it on the waiter's CPU;
        // it does, on a busy machine): a short command is done before a PING could be.
        // Where the command's forecast knows when its reply is due, rest and watch
        // through that time first (apir::wait_for_reply).
        // A reply the forecast rests for: rest and watch (as above), or block at once in
        // the PING barrier below (the server answers the PING once the command has run:
        // no CPU meanwhile), as the forecast's timing chose (ArrivalForecast::rest_mode).
        const auto began = clk.now();
        nanoseconds window = std::clamp(policy.spin_for, nanoseconds::zero(), max_spin_window);
        ArrivalForecast* const forecast = policy.forecast;
        // The forecast this wait rests and looks by (the adaptive policy's only).
        ArrivalForecast* const guide =
            policy.kind == WaitPolicy::Kind::adaptive ? forecast : nullptr;
        const detail::RestChoice choice = detail::choose_rest(guide, true, clk);
        if (choice.plan.rest > nanoseconds::zero())
            window = std::max(window, choice.plan.rest + choice.plan.watch);
        // A reply the command's forecast is sure comes after the longest look, where it
        // does not rest: looking cannot win; the PING barrier at once.
        const bool looks_cannot_win =
            choice.plan.rest <= nanoseconds::zero() && detail::spin_cannot_win(guide, window);
        if (choice.way == ArrivalForecast::Rest::watch && !looks_cannot_win) {
            WaitHooks hooks;
            hooks.yield_between_looks = true;
            auto spun =
                wait_for_reply(bytes, policy, detail_spin_deadline(clk, window, deadline), hooks);
            if (spun) {
                n_spin.fetch_add(1, std::memory_order_relaxed);
                choice.report(clk);
                return spun;
            }
            if (spun.error().code() != Errc::timeout) return spun;
        } else {
            n_blocked.fetch_add(1, std::memory_order_relaxed);
        }
        // The reply will come through the PING barrier: the forecast learns from it too.
        auto code = wait_past_ping(bytes, page.res_id(), mine, deadline, clk);
        if (code && forecast) {
            forecast->observe(clk.now() - began);
            choice.report(clk);
        }
        return code;
    }

    // The rest of a wait: the PING barrier.
    Expected<uint32_t> wait_past_ping(std::span<std::byte> bytes, uint32_t res_id, uint64_t mine,
                                      Deadline deadline, const WaitClock& clk) {
        // 2. The PING barrier: the server answers in order, so once a PING sent after our
        // command is answered, the command has run.
        for (;;) {
            if (const uint32_t w = notification_word(bytes).load(std::memory_order_acquire)) {
                n_ping_replies.fetch_add(1, std::memory_order_relaxed);
                return w - 1;
            }
            if (deadline.expired(clk.now()))
                return fail(Errc::timeout, "vtest: no reply before the deadline");
            // The lock may be held by a waiter for a longer command that ran after ours:
            // our word is looked at while waiting for it.
            std::unique_lock lk(io_mu, std::defer_lock);
            bool answered = false;
            while (!lk.try_lock_for(lock_slice)) {
                if (notification_word(bytes).load(std::memory_order_acquire) != 0) {
                    answered = true;
                    break;
                }
                if (closing.load(std::memory_order_acquire))
                    return dropped_or(bytes, closed_error());
                if (deadline.expired(clk.now()))
                    return dropped_or(bytes, Error(Errc::timeout,
                                                   "vtest: the connection stayed busy until the "
                                                   "deadline"));
            }
            if (answered) continue;
            // The reply may have come while the lock was being taken.
            if (const uint32_t w = notification_word(bytes).load(std::memory_order_acquire)) {
                n_ping_replies.fetch_add(1, std::memory_order_relaxed);
                return w - 1;
            }
            if (closing.load(std::memory_order_acquire))
                (void)break_connection("the transport was closed");
            if (broken) return dropped_or(bytes, *broken);
            if (completed >= mine) {
                n_dropped.fetch_add(1, std::memory_order_relaxed);
                return dropped_or(
                    bytes,
                    Error(Errc::unknown_resource,
                          fmt::format("vtest: the host finished the command without a reply on "
                                      "page {} (it drops a command whose reply page it does not "
                                      "know or that is too small; it may also have marked the "
                                      "context fatal: reconnect)",
                                      res_id)));
            }
            uint64_t covered = completed; // by the last PING sent
            for (auto it = owed.rbegin(); it != owed.rend(); ++it)
                if (!it->blob) {
                    covered = std::max(covered, it->covers);
                    break;
                }
            if (covered < mine) {
                if (auto s = send_ping(deadline, clk); !s) return dropped_or(bytes, s.error());
            }
            if (auto r = read_answer(deadline, clk); !r) return dropped_or(bytes, r.error());
        }
    }

    static Deadline detail_spin_deadline(const WaitClock& clk, nanoseconds window, Deadline d) {
        return Deadline::sooner(d, Deadline::after(window, clk));
    }

    Expected<void> ping(Deadline d) {
        const WaitClock& clk = WaitClock::system();
        auto lk = lock(d);
        if (!lk) return Unexpected{std::move(lk).error()};
        APIR_TRY(drain(d, clk));
        APIR_TRY(send_ping(d, clk));
        return read_answer(d, clk);
    }
};

// --- opening: connect, CREATE_RENDERER, version, capset, context

namespace {

struct Opener {
    const VtestOptions& o;
    int fd;
    Deadline d;
    const WaitClock& clk = WaitClock::system();

    Error timed_out(std::string_view step) const {
        return Error(Errc::timeout,
                     fmt::format("vtest: the server at {} accepted the connection but did not "
                                 "answer {} within {} (is it a vtest server? is it stuck?)",
                                 o.socket_path, step, ms_text(o.connect_timeout)));
    }
    Error lost(std::string_view step, const IoResult& r) const {
        return Error(Errc::disconnected,
                     fmt::format("vtest: the server at {} closed the connection at {}{}; its "
                                 "log says why",
                                 o.socket_path, step,
                                 r.err ? fmt::format(" ({})", std::strerror(r.err)) : ""))
            .with_errno(r.err);
    }
    Expected<void> send(std::span<const std::byte> m, std::string_view step) {
        const IoResult r = send_all(fd, m, d, clk);
        if (r.kind == Io::ok) return {};
        if (r.kind == Io::timeout) return fail(timed_out(step));
        return fail(lost(step, r));
    }
    Expected<void> recv(std::span<std::byte> m, std::string_view step) {
        const IoResult r = recv_exact(fd, m, d, clk);
        if (r.kind == Io::ok) return {};
        if (r.kind == Io::timeout) return fail(timed_out(step));
        return fail(lost(step, r));
    }
    // A reply header: its length in words, checked against the id expected.
    Expected<uint32_t> header(uint32_t id, std::string_view step) {
        std::array<std::byte, 8> h{};
        APIR_TRY(recv(h, step));
        if (word_at(h, 1) != id)
            return fail(Errc::decode_bad_value,
                        fmt::format("vtest: the server at {} answered {} with id {} (expected {})",
                                    o.socket_path, step, word_at(h, 1), id));
        return word_at(h, 0);
    }
};

Expected<PosixFd> connect_socket(const VtestOptions& o, Deadline d) {
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    if (o.socket_path.empty() || o.socket_path.size() >= sizeof addr.sun_path)
        return fail(Errc::invalid_argument,
                    fmt::format("vtest socket path '{}' is empty or longer than {} bytes",
                                o.socket_path, sizeof addr.sun_path - 1));
    std::memcpy(addr.sun_path, o.socket_path.data(), o.socket_path.size());
    for (;;) {
        PosixFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
        if (!fd)
            return fail(
                Error(Errc::device_error, fmt::format("socket(AF_UNIX): {}", std::strerror(errno)))
                    .with_errno(errno));
        if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr) == 0)
            return fd;
        const int e = errno;
        if (e == EAGAIN || e == EINTR) { // the listen queue is full: try again
            if (d.expired())
                return fail(Errc::timeout,
                            fmt::format("vtest: the server at {} did not accept the connection "
                                        "within {}",
                                        o.socket_path, ms_text(o.connect_timeout)));
            std::this_thread::sleep_for(milliseconds(1));
            continue;
        }
        if (e == ENOENT || e == ECONNREFUSED || e == ENOTSOCK)
            return fail(Error(Errc::no_device,
                              fmt::format("no vtest server at {} ({}): start one with "
                                          "'virgl_test_server --no-virgl --socket-path {}' "
                                          "(docs/VTEST.md), or set the path",
                                          o.socket_path, std::strerror(e), o.socket_path))
                            .with_errno(e));
        return fail(Error(Errc::device_error,
                          fmt::format("vtest: connect({}): {}", o.socket_path, std::strerror(e)))
                        .with_errno(e));
    }
}

} // namespace

Expected<VtestTransport> VtestTransport::open(VtestOptions options) {
    if (options.socket_path.empty()) {
        const char* env = std::getenv(vtest_socket_env_var);
        options.socket_path = env && *env ? env : vtest_default_socket;
    }
    const auto start = Clock::now();
    const Deadline d = Deadline::after(options.connect_timeout);
    auto fd = connect_socket(options, d);
    if (!fd) return Unexpected{std::move(fd).error()};
    Opener op{options, fd->get(), d};

    // CREATE_RENDERER comes first; its length alone counts bytes, not words.
    std::vector<std::byte> m;
    std::string name = options.client_name.substr(0, 255);
    const uint32_t name_bytes = static_cast<uint32_t>((name.size() + 1 + 3) / 4 * 4);
    put_words(m, {name_bytes, cmd::create_renderer});
    const size_t at = m.size();
    m.resize(at + name_bytes);
    std::memcpy(m.data() + at, name.data(), name.size());
    // Then the version: PING_PROTOCOL_VERSION says the server negotiates at all.
    put_words(m, {0, cmd::ping_protocol_version, 1, cmd::protocol_version, wanted_version});
    APIR_TRY(op.send(m, "CREATE_RENDERER"));
    {
        auto len = op.header(cmd::ping_protocol_version, "PING_PROTOCOL_VERSION");
        if (!len) return Unexpected{std::move(len).error()};
        if (*len != 0)
            return fail(Errc::decode_bad_value, "vtest: PING_PROTOCOL_VERSION answered with data");
    }
    {
        auto len = op.header(cmd::protocol_version, "PROTOCOL_VERSION");
        if (!len) return Unexpected{std::move(len).error()};
        if (*len != 1)
            return fail(Errc::decode_bad_value,
                        fmt::format("vtest: PROTOCOL_VERSION answered with {} words", *len));
    }
    std::array<std::byte, 4> vw{};
    APIR_TRY(op.recv(vw, "PROTOCOL_VERSION"));
    const uint32_t version = word_at(vw, 0);
    if (version > wanted_version)
        return fail(Errc::decode_bad_value,
                    fmt::format("vtest: the server at {} granted protocol {}, above the {} asked",
                                options.socket_path, version, wanted_version));
    if (version < min_version)
        return fail(Errc::version_mismatch,
                    fmt::format("vtest: the server at {} speaks vtest protocol {}; apir needs {} "
                                "or later (blobs, CONTEXT_INIT, SUBMIT_CMD2): use a newer "
                                "virglrenderer",
                                options.socket_path, version, min_version));

    // The capset: offered at all, and with blob support.
    m.clear();
    put_words(m, {2, cmd::get_capset, options.capset, 0});
    APIR_TRY(op.send(m, "GET_CAPSET"));
    auto len = op.header(cmd::get_capset, "GET_CAPSET");
    if (!len) return Unexpected{std::move(len).error()};
    if (*len < 1 || *len > max_capset_words)
        return fail(Errc::decode_bad_value,
                    fmt::format("vtest: GET_CAPSET answered with {} words", *len));
    std::vector<std::byte> caps(size_t{*len} * 4);
    APIR_TRY(op.recv(caps, "GET_CAPSET"));
    const std::string cap_fix = fmt::format(
        "the server lacks the APIR host: use a virglrenderer built with -Dapir=true and start "
        "it without --venus");
    if (word_at(caps, 0) == 0)
        return fail(Errc::unsupported,
                    fmt::format("vtest: the server at {} does not offer capset {}: {}",
                                options.socket_path, options.capset, cap_fix));
    // The APIR capset's third word says whether blobs are supported: an answer too short
    // to say is refused, not taken for a yes.
    if (options.capset == capset_apir && *len < 3)
        return fail(Errc::decode_bad_value,
                    fmt::format("vtest: GET_CAPSET answered capset {} with {} words, too few to "
                                "say whether blobs are supported",
                                options.capset, *len));
    if (options.capset == capset_apir && word_at(caps, 2) == 0)
        return fail(Errc::unsupported,
                    fmt::format("vtest: the server's capset {} has no blob resources: {}",
                                options.capset, cap_fix));

    // CONTEXT_INIT has no answer: a refusal shows as the connection dropped at the next
    // message, so a PING confirms it.
    m.clear();
    put_words(m, {1, cmd::context_init, options.capset, 0, cmd::ping_protocol_version});
    APIR_TRY(op.send(m, "CONTEXT_INIT"));
    if (auto h = op.header(cmd::ping_protocol_version, "CONTEXT_INIT"); !h) {
        Error e = std::move(h).error();
        if (e.code() == Errc::disconnected)
            return fail(Errc::disconnected,
                        fmt::format("vtest: the server at {} refused a context on capset {} "
                                    "(it closed the connection): its log says why",
                                    options.socket_path, options.capset));
        return fail(std::move(e));
    } else if (*h != 0) {
        return fail(Errc::decode_bad_value,
                    "vtest: the PING after CONTEXT_INIT was answered with data");
    }

    auto impl = std::make_unique<Impl>(std::move(options), std::move(*fd));
    impl->version = version;
    impl->options.logger.info("vtest: connected to {} (protocol {}, capset {}) in {}",
                              impl->options.socket_path, version, impl->options.capset,
                              ms_text(duration_cast<nanoseconds>(Clock::now() - start)));
    return VtestTransport(std::move(impl));
}

VtestTransport::VtestTransport(std::unique_ptr<Impl> impl) noexcept : impl_(std::move(impl)) {}
VtestTransport::VtestTransport(VtestTransport&&) noexcept = default;
VtestTransport& VtestTransport::operator=(VtestTransport&& other) noexcept {
    if (this != &other) {
        if (impl_) impl_->close_and_wait();
        impl_ = std::move(other.impl_);
    }
    return *this;
}
VtestTransport::~VtestTransport() {
    if (impl_) impl_->close_and_wait();
}

void VtestTransport::close() noexcept {
    if (impl_) impl_->close();
}

namespace {
Unexpected moved_from() {
    return fail(Errc::disconnected, "the vtest transport was moved from");
}
} // namespace

Expected<Shmem> VtestTransport::create_shmem(size_t size) {
    return create_shmem(size, Deadline::never());
}
Expected<Shmem> VtestTransport::create_shmem(size_t size, Deadline deadline) {
    if (!impl_) return moved_from();
    Impl::Call in(*impl_);
    return impl_->create_shmem(size, deadline);
}
Expected<void> VtestTransport::submit(std::span<const std::byte> command, uint32_t,
                                      Deadline deadline) {
    if (!impl_) return moved_from();
    Impl::Call in(*impl_);
    return impl_->submit(command, deadline);
}
Expected<uint32_t> VtestTransport::wait_reply(const Shmem& page, const WaitPolicy& policy,
                                              Deadline deadline) {
    if (!impl_) return moved_from();
    Impl::Call in(*impl_);
    return impl_->wait_reply(page, policy, deadline);
}
Expected<void> VtestTransport::ping(Deadline deadline) {
    if (!impl_) return moved_from();
    Impl::Call in(*impl_);
    return impl_->ping(deadline);
}
std::string_view VtestTransport::name() const noexcept {
    return impl_ ? "vtest" : "moved-from";
}
uint32_t VtestTransport::protocol_version() const noexcept {
    return impl_ ? impl_->version : 0;
}
const std::string& VtestTransport::socket_path() const noexcept {
    static const std::string none;
    return impl_ ? impl_->options.socket_path : none;
}
VtestStats VtestTransport::stats() const noexcept {
    if (!impl_) return {};
    VtestStats s;
    s.submits = impl_->sent_count.load(std::memory_order_relaxed);
    s.pings = impl_->n_pings.load(std::memory_order_relaxed);
    s.spin_replies = impl_->n_spin.load(std::memory_order_relaxed);
    s.ping_replies = impl_->n_ping_replies.load(std::memory_order_relaxed);
    s.blocked = impl_->n_blocked.load(std::memory_order_relaxed);
    s.dropped = impl_->n_dropped.load(std::memory_order_relaxed);
    s.blobs_created = impl_->n_created.load(std::memory_order_relaxed);
    s.blobs_released = impl_->n_released.load(std::memory_order_relaxed);
    std::lock_guard lk(impl_->blobs_mu);
    s.live_blobs = impl_->live.size();
    s.live_bytes = impl_->live_bytes;
    return s;
}

} // namespace apir
