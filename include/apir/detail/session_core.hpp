// The parts of Session that do not depend on the transport or the call types, compiled
// once in src/libapir/session/session_core.cpp: the call itself past its encoding (CallCore:
// channel, submit, wait, retire), the channel pool and its quarantine, the staging pool,
// the per-command counters. Session<T> (session.hpp) is a thin template over it that
// encodes requests and decodes replies.
#pragma once

#include "apir/error.hpp"
#include "apir/export.hpp"
#include "apir/protocol.hpp"
#include "apir/session_options.hpp"
#include "apir/transport.hpp"
#include "apir/wire.hpp"

#include <array>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <thread>
#include <tuple>
#include <type_traits>
#include <vector>

namespace apir {

/// Counters of one command (HANDSHAKE, LOADLIBRARY, or one FORWARD id). Every FORWARD
/// id has a row of its own, up to Session::max_forward_rows distinct ids of 256 and
/// above; ids past that bound share one row marked other_ids.
struct CommandStats {
    CommandType type = CommandType::forward;
    uint32_t id = 0;
    /// The row of the FORWARD ids (>= 256) that found no row of their own; id is 0.
    bool other_ids = false;
    uint64_t calls = 0;
    uint64_t failures = 0;
    /// Time spent in the calls; zero unless SessionOptions::time_calls.
    std::chrono::nanoseconds total{0};
    std::chrono::nanoseconds max{0};
    /// When the command's reply is due, as its forecast has learned it (0: not yet, or
    /// too short to rest for), and whether its waits rest by it (WaitPolicy::forecast).
    std::chrono::nanoseconds reply_due{0};
    bool rests = false;
    /// Where the host can wake the waiter, whether the last measurement chose to block
    /// until it does (else the waits rest and watch), and how many times the two ways
    /// were timed against each other (ArrivalForecast::rest_chosen).
    bool blocks = false;
    unsigned rest_measurements = 0;
    [[nodiscard]] std::chrono::nanoseconds mean() const {
        return calls ? total / static_cast<int64_t>(calls) : std::chrono::nanoseconds{0};
    }
};

namespace detail {

/// The staging blobs of one session, reused, each lent to one Staging at a time.
///
/// At most `bound` blobs are lent to callers that hold none: past it a caller waits
/// its turn (first come, first served) until its deadline, then STAGING_EXHAUSTED. A
/// thread that already holds one never waits (waiting while holding could deadlock
/// with the other holders): it gets another at once, beyond the bound, up to 2 x bound
/// in all, else STAGING_EXHAUSTED at once. Since a first blob is lent only below the
/// bound, at most `bound` threads hold blobs, so every one of them can hold two
/// (ggml's copy paths). Free blobs are kept while they add up to at most `retain`
/// bytes; a blob given back past that is released. Entries never move (the vector is
/// reserved up front); new blobs are made outside the lock.
class APIR_EXPORT StagingPool {
public:
    StagingPool(size_t bound, size_t retain_bytes);
    StagingPool(const StagingPool&) = delete;
    StagingPool& operator=(const StagingPool&) = delete;

    /// Makes a blob of n bytes, until the deadline (on the steady clock).
    using Create = Expected<Shmem> (*)(void* ctx, size_t n, Deadline deadline);
    struct Lent {
        size_t index;
        uint32_t res_id;
        std::span<std::byte> bytes;
    };
    /// Lends a blob of at least n bytes: the smallest free one that fits, or a new one
    /// from create(ctx, n) (pre-faulted). Waits on `clock` until `deadline` when
    /// `bound` blobs are lent and this thread holds none.
    Expected<Lent> lend(size_t n, Deadline deadline, const WaitClock& clock, Create create,
                        void* ctx);
    void give_back(size_t i) noexcept;
    /// The host may still write a blob held during a call that timed out.
    void taint_held() noexcept;
    [[nodiscard]] size_t held();
    /// How many times a blob was created (or re-created larger).
    [[nodiscard]] uint64_t creates() const noexcept {
        return creates_.load(std::memory_order_relaxed);
    }

private:
    struct Entry {
        Shmem blob;
        std::thread::id holder; // the thread it was lent to
        bool held = false;
        bool tainted = false; // named by a call that timed out: never lent again
    };
    // A caller waiting its turn: a node of a FIFO list on the caller's stack.
    struct Waiter {
        Waiter* next = nullptr;
    };
    size_t pick(size_t n) const noexcept;
    void dequeue(Waiter& w) noexcept;
    void wake_locked() noexcept;

    std::mutex mu_;
    std::vector<Entry> entries_; // under mu_, like everything below but the atomics
    size_t bound_;
    size_t retain_;
    size_t held_ = 0;
    Waiter* head_ = nullptr;
    Waiter* tail_ = nullptr;
    std::atomic<uint32_t> turn_{0};     // futex word: bumped when a waiter may proceed
    std::atomic<uint32_t> sleepers_{0}; // callers blocked on turn_
    std::atomic<uint64_t> creates_{0};
};

/// A reply page and a command buffer: what one in-flight call needs.
struct Channel {
    Shmem page;
    std::unique_ptr<std::byte[]> cmd;
    std::atomic<uint32_t> next{0}; // the free list's link: index + 1, 0 = end
    uint32_t index = 0;
    uint32_t calls = 0; // calls made on it (by its caller of the moment): the fill pattern
};

// Short replies. A reply carries no length: the guest cannot see how many bytes the
// host wrote. So before each call the session fills the bytes the reply can be decoded
// from (the reply type's largest encoding, or the whole page for strings and vectors)
// with a word that changes on every call; a reply the host wrote no bytes of, or whose
// last 8 bytes (4 for a 4-byte reply) it did not write, still ends in that word and
// fails with DECODE_OVERRUN, never decoding another call's bytes.

inline constexpr size_t unbounded_reply = ~size_t{0};

template <class T>
struct is_std_array : std::false_type {};
template <class T, size_t N>
struct is_std_array<std::array<T, N>> : std::true_type {
    using element = T;
    static constexpr size_t size = N;
};
template <class T>
struct is_std_optional : std::false_type {};
template <class T>
struct is_std_optional<std::optional<T>> : std::true_type {
    using element = T;
};

constexpr size_t add_extent(size_t a, size_t b) {
    return a == unbounded_reply || b == unbounded_reply || a > unbounded_reply - b ? unbounded_reply
                                                                                   : a + b;
}

/// The most bytes a decode of T reads, for the built-in wire types; unbounded_reply
/// for strings, vectors, blobs and types with wire_traits of their own.
template <class T>
constexpr size_t reply_extent() {
    if constexpr (is_scalar_wire_v<T>) {
        return wire_traits<T>::wire_size;
    } else if constexpr (is_std_array<T>::value) {
        using E = typename is_std_array<T>::element;
        constexpr size_t n = is_std_array<T>::size;
        if constexpr (is_byte_like_v<E>) {
            return wire_align(n);
        } else {
            constexpr size_t e = reply_extent<E>();
            return e == unbounded_reply || (e && n > unbounded_reply / e) ? unbounded_reply : n * e;
        }
    } else if constexpr (is_std_optional<T>::value) {
        return add_extent(8, reply_extent<typename is_std_optional<T>::element>());
    } else if constexpr (WireStruct<T>) {
        return std::apply(
            [](auto... m) {
                size_t total = 0;
                ((total =
                      add_extent(total, reply_extent<typename member_type<decltype(m)>::type>())),
                 ...);
                return total;
            },
            T::wire_fields.members);
    } else {
        return unbounded_reply;
    }
}

/// Fills the first `extent` bytes of the reply payload (at most all of it) with a word
/// new to this call, and returns it.
APIR_EXPORT uint32_t mark_unwritten(Channel& c, std::span<std::byte> payload,
                                    size_t extent) noexcept;
/// After the decode of a reply that consumed `consumed` bytes (`decoded`: without an
/// error): DECODE_OVERRUN if the reply ends in bytes the host did not write.
APIR_EXPORT Expected<void> check_written(std::span<const std::byte> payload, size_t consumed,
                                         bool decoded, uint32_t pattern);

/// The channels of one session. Free channels are a lock-free stack (a call takes and
/// gives back one without a lock); channels whose call timed out are kept aside until
/// their late reply lands (under a mutex, off the fast path). Channels are never
/// destroyed before the pool.
class APIR_EXPORT ChannelPool {
public:
    explicit ChannelPool(size_t command_buffer_size);
    ~ChannelPool();
    ChannelPool(const ChannelPool&) = delete;
    ChannelPool& operator=(const ChannelPool&) = delete;

    /// A free channel, or one set aside whose late reply has arrived; null when a new
    /// one must be made (add); HOST_BEHIND while max_stale are unanswered.
    Expected<Channel*> acquire();
    /// Makes a channel around a new reply page (allocates: not the steady state).
    Expected<Channel*> add(Shmem page);
    void release(Channel* c) noexcept;
    /// The call timed out: the host may still answer into this page.
    void retire(Channel* c) noexcept;

    static constexpr size_t max_stale = 64;

private:
    static constexpr size_t chunk = 64, max_chunks = 1024;
    Channel* at(uint32_t index) const noexcept;

    size_t command_buffer_size_;
    std::atomic<uint64_t> head_{0}; // (tag << 32) | (index + 1) of the top free channel
    std::mutex mu_;                 // below: making channels, the stale list
    std::array<std::atomic<Channel*>, max_chunks> chunks_{};
    uint32_t count_ = 0;
    std::vector<Channel*> stale_;
};

/// What one session learns of its commands: counters (lock-free atomics) and when each
/// command's reply is due (the forecast its waits rest by), a row per command.
class APIR_EXPORT SessionCounters {
public:
    void record(CommandType type, uint32_t id, std::chrono::nanoseconds took, bool ok) noexcept;
    /// The command's reply forecast (WaitPolicy::forecast).
    [[nodiscard]] ArrivalForecast& forecast(CommandType type, uint32_t id) noexcept {
        return slot(type, id).reply_due;
    }
    [[nodiscard]] std::vector<CommandStats> stats() const;

    static constexpr size_t max_forward_rows = 64;

private:
    struct Slot {
        std::atomic<uint64_t> calls{0}, failures{0}, total_ns{0}, max_ns{0};
        ArrivalForecast reply_due;
    };
    // A row for one FORWARD id >= max_forward_ids: key is id + 1 once claimed, 0 before.
    struct HighSlot {
        std::atomic<uint64_t> key{0};
        Slot slot;
    };
    static constexpr size_t max_forward_ids = 256;
    static constexpr size_t handshake_slot = 0, load_library_slot = 1, first_forward_slot = 2;
    static constexpr size_t overflow_slot = first_forward_slot + max_forward_ids;
    Slot& high_slot(uint32_t id) noexcept;
    Slot& slot(CommandType type, uint32_t id) noexcept {
        return type == CommandType::handshake      ? slots_[handshake_slot]
               : type == CommandType::load_library ? slots_[load_library_slot]
               : id < max_forward_ids              ? slots_[first_forward_slot + id]
                                                   : high_slot(id);
    }
    static CommandStats row(CommandStats c, const Slot& s, uint64_t calls);

    std::array<Slot, overflow_slot + 1> slots_{};
    std::array<HighSlot, max_forward_rows> high_ids_{};
};

/// One session's calls past their encoding, compiled once: a channel (reply page and
/// command buffer) per call, the submission, the wait, the counters, and what a failed
/// wait leaves behind (the channel and the staging blobs held are never reused: the
/// host may still write them). Session<T> encodes into the channel's command buffer
/// and decodes the reply page; everything between is here.
class APIR_EXPORT CallCore {
public:
    CallCore(TransportOps ops, SessionOptions options);
    CallCore(const CallCore&) = delete;
    CallCore& operator=(const CallCore&) = delete;

    /// A channel for one call: a free one, or one around a new reply page, made before the
    /// call's deadline (on the wait's clock) where the transport takes one.
    Expected<Channel*> begin(Deadline deadline);
    Expected<Channel*> begin() { return begin(Deadline::never()); }
    /// The channel's command buffer, to encode the request into.
    [[nodiscard]] std::span<std::byte> command_buffer(Channel& c) const noexcept {
        return {c.cmd.get(), options_.command_buffer_size};
    }
    /// Submits cmd (the request encoded into c's command buffer, naming c's page) and
    /// waits for its return code until the deadline, resting by the command's forecast. When it
    /// fails, c is already given back (or set aside after a failed wait); when it succeeds, the
    /// caller decodes the page, then calls end(c).
    Expected<uint32_t> exchange(Channel& c, std::span<const std::byte> cmd, Deadline deadline,
                                ArrivalForecast& forecast);
    /// Gives the channel back.
    void end(Channel& c) noexcept;
    /// The error of a failed call of this type, with what the transport can add.
    [[nodiscard]] Error explain(CommandType type, Error e);

    /// Lends a staging blob (see Session::stage).
    Expected<StagingPool::Lent> lend(size_t n, Deadline deadline);
    [[nodiscard]] StagingPool& staging() noexcept { return staging_; }
    [[nodiscard]] const StagingPool& staging() const noexcept { return staging_; }
    [[nodiscard]] SessionCounters& counters() noexcept { return counters_; }
    [[nodiscard]] const SessionCounters& counters() const noexcept { return counters_; }
    [[nodiscard]] const SessionOptions& options() const noexcept { return options_; }
    [[nodiscard]] int32_t command_type_offset() const noexcept { return ops_.command_type_offset; }
    /// Calls in flight, counted by debug builds of the caller (Session::call).
    [[nodiscard]] std::atomic<uint32_t>& in_flight() noexcept { return in_flight_; }

private:
    TransportOps ops_;
    SessionOptions options_;
    std::atomic<uint32_t> in_flight_{0};
    ChannelPool channels_;
    StagingPool staging_;
    SessionCounters counters_;
};

/// Touches every page of a new mapping now, so that the first transfer into it does
/// not fault page by page (MADV_POPULATE_WRITE where the kernel has it).
APIR_EXPORT void prefault(std::span<std::byte> bytes) noexcept;

} // namespace detail
} // namespace apir
