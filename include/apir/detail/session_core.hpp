// The parts of Session that do not depend on the transport type, compiled once in
// src/session/session_core.cpp: the channel pool and its quarantine, the staging pool,
// the per-command counters. Session<T> (session.hpp) is a thin template over it.
#pragma once

#include "apir/error.hpp"
#include "apir/export.hpp"
#include "apir/protocol.hpp"
#include "apir/transport.hpp"

#include <array>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
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
    [[nodiscard]] std::chrono::nanoseconds mean() const {
        return calls ? total / static_cast<int64_t>(calls) : std::chrono::nanoseconds{0};
    }
};

namespace detail {

/// The staging blobs of one session: at most `capacity`, reused, each lent to one
/// Staging at a time. Entries never move (the vector is reserved up front). Blobs
/// given back while the pool holds more than `retain` bytes are released.
struct APIR_EXPORT StagingPool {
    struct Entry {
        Shmem blob;
        bool held = false;
        bool tainted = false; // named by a call that timed out: never lent again
    };
    StagingPool(size_t capacity, size_t retain_bytes);
    void give_back(size_t i) noexcept;
    /// The host may still write a blob held during a call that timed out.
    void taint_held() noexcept;
    [[nodiscard]] size_t held();
    /// Lends a blob of at least n bytes: the smallest free one that fits, or a new one
    /// from create(ctx, n) (pre-faulted). STAGING_EXHAUSTED when all are held.
    using Create = Expected<Shmem> (*)(void* ctx, size_t n);
    struct Lent {
        size_t index;
        uint32_t res_id;
        std::span<std::byte> bytes;
    };
    Expected<Lent> lend(size_t n, Create create, void* ctx);

    std::mutex mu;
    std::vector<Entry> entries;
    size_t retain;
    std::atomic<uint64_t> creates{0};
};

/// A reply page and a command buffer: what one in-flight call needs.
struct Channel {
    Shmem page;
    std::unique_ptr<std::byte[]> cmd;
    std::atomic<uint32_t> next{0}; // the free list's link: index + 1, 0 = end
    uint32_t index = 0;
};

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

/// The counters of one session: lock-free atomics, a row per command.
class APIR_EXPORT SessionCounters {
public:
    void record(CommandType type, uint32_t id, std::chrono::nanoseconds took, bool ok) noexcept;
    [[nodiscard]] std::vector<CommandStats> stats() const;

    static constexpr size_t max_forward_rows = 64;

private:
    struct Slot {
        std::atomic<uint64_t> calls{0}, failures{0}, total_ns{0}, max_ns{0};
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
    static CommandStats row(CommandStats c, const Slot& s, uint64_t calls);

    std::array<Slot, overflow_slot + 1> slots_{};
    std::array<HighSlot, max_forward_rows> high_ids_{};
};

/// Touches every page of a new mapping now, so that the first transfer into it does
/// not fault page by page (MADV_POPULATE_WRITE where the kernel has it).
APIR_EXPORT void prefault(std::span<std::byte> bytes) noexcept;

} // namespace detail
} // namespace apir
