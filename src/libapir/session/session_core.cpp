// What Session<T> does that does not depend on T: channels, staging, counters.
#include "apir/detail/session_core.hpp"
#include "apir/internal/futex.hpp"
#include "apir/reply_page.hpp"

#include <algorithm>
#include <cstring>
#include <exception>

#include <sys/mman.h>
#include <unistd.h>

namespace apir::detail {

// --- StagingPool

namespace {
// A deadline on the wait's clock as one on the steady clock (what a transport's
// create_shmem takes).
Deadline on_steady_clock(Deadline d, const WaitClock& clock) {
    return d.is_never() ? d : Deadline::after(d.time() - clock.now());
}

// A bound past which reserving the entries would be absurd (2 x this many entries).
constexpr size_t max_staging_bound = 1024;
} // namespace

StagingPool::StagingPool(size_t bound, size_t retain_bytes)
    : bound_(std::min(bound, max_staging_bound)), retain_(retain_bytes) {
    entries_.reserve(2 * bound_);
}

// The entry to lend for n bytes: the smallest free blob that fits, else a free entry
// without a blob, else the smallest free blob (too small: replaced), else a new entry
// (entries_.size()). There is always one: fewer than 2 x bound_ are held.
size_t StagingPool::pick(size_t n) const noexcept {
    constexpr size_t none = ~size_t{0};
    size_t fit = none, empty = none, small = none;
    for (size_t i = 0; i < entries_.size(); ++i) {
        const Entry& e = entries_[i];
        if (e.held) continue;
        if (!e.blob) {
            if (empty == none) empty = i;
        } else if (e.blob.size() >= n) {
            if (fit == none || e.blob.size() < entries_[fit].blob.size()) fit = i;
        } else if (small == none || e.blob.size() < entries_[small].blob.size()) {
            small = i;
        }
    }
    if (fit != none) return fit;
    if (empty != none) return empty;
    if (entries_.size() < entries_.capacity()) return entries_.size();
    return small;
}

void StagingPool::dequeue(Waiter& w) noexcept {
    Waiter* prev = nullptr;
    for (Waiter* x = head_; x; prev = x, x = x->next) {
        if (x != &w) continue;
        (prev ? prev->next : head_) = w.next;
        if (tail_ == &w) tail_ = prev;
        return;
    }
}

// Under mu_: something a waiter waits for changed (a blob came back, the first in
// line left). Waiters look again.
void StagingPool::wake_locked() noexcept {
    turn_.fetch_add(1, std::memory_order_release);
    if (sleepers_.load(std::memory_order_acquire) != 0) futex_wake_all(&turn_);
}

Expected<StagingPool::Lent> StagingPool::lend(size_t n, Deadline deadline, const WaitClock& clock,
                                              Create create, void* ctx) {
    constexpr size_t min_size = size_t{1} << 20;
    const auto me = std::this_thread::get_id();
    std::unique_lock lk(mu_);
    const auto mine =
        static_cast<size_t>(std::count_if(entries_.begin(), entries_.end(), [&](const Entry& e) {
            return e.held && e.holder == me;
        }));
    if (bound_ == 0) return fail(Errc::staging_exhausted, "SessionOptions::staging_blobs is 0");
    if (mine > 0) {
        // Never waits: the holders of the other blobs may be waiting for this one's.
        if (held_ >= 2 * bound_)
            return fail(Errc::staging_exhausted,
                        fmt::format("this thread holds {} of the {} staging blobs lent (at most "
                                    "twice SessionOptions::staging_blobs, {}); a thread that "
                                    "holds one does not wait for another",
                                    mine, held_, bound_));
    } else if (head_ || held_ >= bound_) {
        // Wait in line until first and a blob is free, or the deadline.
        Waiter w;
        (tail_ ? tail_->next : head_) = &w;
        tail_ = &w;
        while (head_ != &w || held_ >= bound_) {
            const auto now = clock.now();
            if (deadline.expired(now)) {
                const bool first = head_ == &w;
                dequeue(w);
                if (first) wake_locked(); // the next in line may be served
                return fail(Errc::staging_exhausted,
                            fmt::format("{} staging blobs (SessionOptions::staging_blobs) were "
                                        "held by other threads until the deadline",
                                        held_));
            }
            const uint32_t seen = turn_.load(std::memory_order_acquire);
            sleepers_.fetch_add(1, std::memory_order_acq_rel);
            lk.unlock();
            auto left = std::chrono::nanoseconds(std::chrono::milliseconds(100));
            if (!deadline.is_never()) left = std::min(left, deadline.time() - now);
            clock.block(reinterpret_cast<const uint32_t*>(&turn_), seen, left);
            lk.lock();
            sleepers_.fetch_sub(1, std::memory_order_acq_rel);
        }
        dequeue(w);
        if (head_ && held_ + 1 < bound_) wake_locked(); // room for the next in line too
    }
    const size_t i = pick(n);
    if (i == entries_.size()) entries_.emplace_back(); // within the reserved capacity
    Entry& e = entries_[i];
    e.held = true;
    e.holder = me;
    ++held_;
    if (e.blob && e.blob.size() >= n) return Lent{i, e.blob.res_id(), e.blob.bytes().first(n)};
    // A new blob, made outside the lock (creating and pre-faulting 24 MiB takes
    // milliseconds, while other threads give blobs back).
    Shmem old = std::move(e.blob); // too small: replaced
    lk.unlock();
    old.reset();
    // A transport that throws (an allocation of its own) must not leave the entry held.
    auto blob = [&]() -> Expected<Shmem> {
        try {
            return create(ctx, std::max(n, min_size), on_steady_clock(deadline, clock));
        } catch (const std::exception& x) {
            return fail(Errc::out_of_memory, fmt::format("a staging blob: {}", x.what()));
        }
    }();
    if (blob) prefault(blob->bytes());
    lk.lock();
    if (!blob) {
        e.held = false;
        e.tainted = false;
        --held_;
        if (head_) wake_locked();
        return Unexpected{std::move(blob).error()};
    }
    e.blob = std::move(*blob);
    creates_.fetch_add(1, std::memory_order_relaxed);
    return Lent{i, e.blob.res_id(), e.blob.bytes().first(n)};
}

void StagingPool::give_back(size_t i) noexcept {
    Shmem doomed; // released outside the lock
    std::lock_guard lk(mu_);
    Entry& e = entries_[i];
    e.held = false;
    --held_;
    size_t free_bytes = 0;
    for (const auto& x : entries_)
        if (!x.held) free_bytes += x.blob.size();
    // Tainted: the host may still write it. Past the retention bound: the free blobs
    // (not those lent to other threads) keep at most retain_ bytes, so a large
    // transfer does not keep its memory, while concurrent transfers keep theirs.
    if (e.tainted || free_bytes > retain_) {
        doomed = std::move(e.blob);
        e.tainted = false;
    }
    if (head_) wake_locked();
}

void StagingPool::taint_held() noexcept {
    std::lock_guard lk(mu_);
    for (auto& e : entries_)
        if (e.held) e.tainted = true;
}

size_t StagingPool::held() {
    std::lock_guard lk(mu_);
    return held_;
}

// --- Short replies

uint32_t mark_unwritten(Channel& c, std::span<std::byte> payload, size_t extent) noexcept {
    // A word unlikely to be written by a host: it changes on every call (a mix of the
    // channel and its call count), and every byte has its top bit set, so it is not a
    // bool, a small count or an enum, nor ASCII, and a size prefix made of it is over
    // 2^63 (refused).
    uint64_t x = (uint64_t{c.index} << 32 | ++c.calls) + 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    x ^= x >> 31;
    const uint32_t pattern = static_cast<uint32_t>(x) | 0x80808080U;
    const size_t words = std::min(extent, payload.size()) / 4;
    std::byte* p = payload.data();
    for (size_t i = 0; i < words; ++i)
        std::memcpy(p + 4 * i, &pattern, 4);
    return pattern;
}

Expected<void> check_written(std::span<const std::byte> payload, size_t consumed, bool decoded,
                             uint32_t pattern) {
    auto word_at = [&](size_t off) {
        uint32_t w;
        std::memcpy(&w, payload.data() + off, 4);
        return w;
    };
    if (!decoded) {
        // The decode failed already; say why when the host wrote none of the reply.
        const size_t look = std::min<size_t>(payload.size() / 4, 2);
        for (size_t i = 0; i < look; ++i)
            if (word_at(4 * i) != pattern) return {};
        if (look == 0) return {};
        return fail(Errc::decode_overrun,
                    "the host wrote no reply payload (a short reply; its return code said "
                    "success)");
    }
    if (consumed < 4 || consumed > payload.size()) return {};
    // The last 8 bytes read (4 for a 4-byte reply) must have been written by the host.
    const size_t check = consumed >= 8 ? 8 : 4;
    for (size_t off = consumed - check; off < consumed; off += 4)
        if (word_at(off) != pattern) return {};
    size_t from = consumed - check;
    while (from >= 4 && word_at(from - 4) == pattern)
        from -= 4;
    return fail(Errc::decode_overrun,
                fmt::format("the host wrote {} (a short reply): bytes {} to {} of the {}-byte "
                            "reply were not written",
                            from == 0 ? "no reply payload" : "only part of the reply", from,
                            consumed, consumed));
}

void prefault(std::span<std::byte> bytes) noexcept {
    if (bytes.empty()) return;
#ifdef MADV_POPULATE_WRITE
    if (madvise(bytes.data(), bytes.size(), MADV_POPULATE_WRITE) == 0) return;
#endif
    // Older kernels: write one byte of every page (the blob is new: its bytes are 0).
    const auto page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    for (size_t off = 0; off < bytes.size(); off += page)
        reinterpret_cast<volatile std::byte&>(bytes[off]) = std::byte{0};
}

// --- ChannelPool

namespace {
constexpr uint64_t pack(uint64_t tag, uint32_t link) {
    return (tag << 32) | link;
}
constexpr uint32_t link_of(uint64_t head) {
    return static_cast<uint32_t>(head);
}
} // namespace

ChannelPool::ChannelPool(size_t command_buffer_size) : command_buffer_size_(command_buffer_size) {}

ChannelPool::~ChannelPool() {
    for (auto& c : chunks_)
        delete[] c.load(std::memory_order_relaxed);
}

Channel* ChannelPool::at(uint32_t index) const noexcept {
    return chunks_[index / chunk].load(std::memory_order_acquire) + index % chunk;
}

Expected<Channel*> ChannelPool::acquire() {
    // Pop the free stack. The tag in the head's upper half changes on every push and
    // pop, so a channel taken and given back meanwhile cannot fool the exchange (ABA).
    uint64_t head = head_.load(std::memory_order_acquire);
    while (link_of(head) != 0) {
        Channel* c = at(link_of(head) - 1);
        const uint32_t next = c->next.load(std::memory_order_relaxed);
        if (head_.compare_exchange_weak(head, pack((head >> 32) + 1, next),
                                        std::memory_order_acquire, std::memory_order_acquire))
            return c;
    }
    std::lock_guard lk(mu_);
    // A timed-out channel whose late reply has arrived is safe again.
    for (auto it = stale_.begin(); it != stale_.end(); ++it) {
        if (notification_word((*it)->page.bytes()).load(std::memory_order_acquire) != 0) {
            Channel* c = *it;
            stale_.erase(it);
            return c;
        }
    }
    if (stale_.size() >= max_stale)
        return fail(Errc::host_behind,
                    fmt::format("{} calls timed out and the host has answered none of them yet",
                                stale_.size()));
    return nullptr;
}

Expected<Channel*> ChannelPool::add(Shmem page) {
    std::lock_guard lk(mu_);
    if (count_ >= chunk * max_chunks)
        return fail(Errc::out_of_memory,
                    fmt::format("{} channels (calls in flight) at once", count_));
    auto& slot = chunks_[count_ / chunk];
    if (!slot.load(std::memory_order_relaxed))
        slot.store(new Channel[chunk], std::memory_order_release);
    Channel* c = at(count_);
    c->index = count_++;
    c->page = std::move(page);
    c->cmd = std::make_unique<std::byte[]>(command_buffer_size_);
    // Room for every channel, so retire() never allocates.
    stale_.reserve(count_);
    return c;
}

void ChannelPool::release(Channel* c) noexcept {
    uint64_t head = head_.load(std::memory_order_relaxed);
    do {
        c->next.store(link_of(head), std::memory_order_relaxed);
    } while (!head_.compare_exchange_weak(head, pack((head >> 32) + 1, c->index + 1),
                                          std::memory_order_release, std::memory_order_relaxed));
}

// A channel is made only while fewer than max_stale are stale, so they stay bounded
// (max_stale + the caller threads) without ever releasing one.
void ChannelPool::retire(Channel* c) noexcept {
    std::lock_guard lk(mu_);
    stale_.push_back(c);
}

// --- SessionCounters

CommandStats SessionCounters::row(CommandStats c, const Slot& s, uint64_t calls) {
    c.calls = calls;
    c.failures = s.failures.load(std::memory_order_relaxed);
    c.total = std::chrono::nanoseconds(s.total_ns.load(std::memory_order_relaxed));
    c.max = std::chrono::nanoseconds(s.max_ns.load(std::memory_order_relaxed));
    c.reply_due = s.reply_due.estimate();
    c.rests = s.reply_due.plan().rest > std::chrono::nanoseconds::zero();
    c.rest_measurements = s.reply_due.rest_measurements();
    c.blocks = c.rest_measurements > 0 && s.reply_due.rest_chosen() == ArrivalForecast::Rest::block;
    return c;
}

// The row of a FORWARD id >= max_forward_ids: found, or claimed (lock-free, in order),
// or the shared overflow row once all max_forward_rows are taken.
SessionCounters::Slot& SessionCounters::high_slot(uint32_t id) noexcept {
    const uint64_t key = uint64_t{id} + 1;
    for (auto& h : high_ids_) {
        uint64_t seen = h.key.load(std::memory_order_acquire);
        if (seen == 0 && h.key.compare_exchange_strong(seen, key, std::memory_order_acq_rel))
            return h.slot;
        if (seen == key) return h.slot;
    }
    return slots_[overflow_slot];
}

void SessionCounters::record(CommandType type, uint32_t id, std::chrono::nanoseconds took,
                             bool ok) noexcept {
    Slot& s = slot(type, id);
    const auto ns = static_cast<uint64_t>(took.count());
    s.calls.fetch_add(1, std::memory_order_relaxed);
    if (!ok) s.failures.fetch_add(1, std::memory_order_relaxed);
    if (ns == 0) return; // not timed
    s.total_ns.fetch_add(ns, std::memory_order_relaxed);
    uint64_t prev = s.max_ns.load(std::memory_order_relaxed);
    while (prev < ns && !s.max_ns.compare_exchange_weak(prev, ns, std::memory_order_relaxed)) {
    }
}

std::vector<CommandStats> SessionCounters::stats() const {
    std::vector<CommandStats> out;
    for (size_t i = 0; i < slots_.size(); ++i) {
        const Slot& s = slots_[i];
        uint64_t n = s.calls.load(std::memory_order_relaxed);
        if (n == 0) continue;
        CommandStats c;
        if (i == handshake_slot) {
            c.type = CommandType::handshake;
        } else if (i == load_library_slot) {
            c.type = CommandType::load_library;
        } else {
            c.type = CommandType::forward;
            c.id = static_cast<uint32_t>(i - first_forward_slot);
        }
        if (i == overflow_slot) {
            c.id = 0;
            c.other_ids = true;
        }
        out.push_back(row(c, s, n));
    }
    // Ids of 256 and above, in the order they were first called.
    for (const auto& h : high_ids_) {
        const uint64_t key = h.key.load(std::memory_order_acquire);
        if (key == 0) break; // rows are claimed in order
        uint64_t n = h.slot.calls.load(std::memory_order_relaxed);
        if (n == 0) continue;
        CommandStats c;
        c.id = static_cast<uint32_t>(key - 1);
        out.push_back(row(c, h.slot, n));
    }
    return out;
}

} // namespace apir::detail

// --- CallCore

namespace apir::detail {

CallCore::CallCore(TransportOps ops, SessionOptions options)
    : ops_(ops), options_(std::move(options)), channels_(options_.command_buffer_size),
      staging_(options_.staging_blobs, options_.staging_retain_bytes) {}

Expected<Channel*> CallCore::begin(Deadline deadline) {
    auto c = channels_.acquire();
    if (!c || *c) return c;
    auto page = ops_.create_shmem(ops_.self, reply_page_size,
                                  on_steady_clock(deadline, options_.wait.time()));
    if (!page) return Unexpected{std::move(page).error()};
    return channels_.add(std::move(*page));
}

Expected<uint32_t> CallCore::exchange(Channel& c, std::span<const std::byte> cmd, Deadline deadline,
                                      ArrivalForecast& forecast) {
    reset_notification(c.page);
    if (auto s = ops_.submit(ops_.self, cmd, c.page.res_id(), deadline); !s) {
        channels_.release(&c);
        return Unexpected{std::move(s).error()};
    }
    WaitPolicy policy = options_.wait;
    policy.forecast = &forecast;
    auto code = ops_.wait_reply(ops_.self, c.page, policy, deadline);
    if (!code) {
        // The host may still answer into this page, and write the blobs the request
        // named, later: never reuse them blindly.
        channels_.retire(&c);
        staging_.taint_held();
    }
    return code;
}

void CallCore::end(Channel& c) noexcept {
    channels_.release(&c);
}

Error CallCore::explain(CommandType type, Error e) {
    if (!ops_.diagnostics) return e;
    TransportDiagnostics* d = ops_.diagnostics(ops_.self);
    if (!d) return e;
    std::string note = d->explain(type, e);
    return note.empty() ? e : e.with_note(note);
}

Expected<StagingPool::Lent> CallCore::lend(size_t n, Deadline deadline) {
    return staging_.lend(
        n, deadline, options_.wait.time(),
        [](void* ops, size_t size, Deadline d) {
            auto* o = static_cast<TransportOps*>(ops);
            return o->create_shmem(o->self, size, d);
        },
        &ops_);
}

} // namespace apir::detail
