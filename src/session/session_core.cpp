// What Session<T> does that does not depend on T: channels, staging, counters.
#include "apir/detail/session_core.hpp"
#include "apir/reply_page.hpp"

#include <algorithm>
#include <cstring>

#include <sys/mman.h>
#include <unistd.h>

namespace apir::detail {

// --- StagingPool

StagingPool::StagingPool(size_t capacity, size_t retain_bytes) : retain(retain_bytes) {
    entries.reserve(capacity);
}

void StagingPool::give_back(size_t i) noexcept {
    Shmem doomed; // released outside the lock
    std::lock_guard lk(mu);
    Entry& e = entries[i];
    e.held = false;
    size_t kept = 0;
    for (const auto& x : entries)
        kept += x.blob.size();
    // Tainted: the host may still write it. Past the retention bound: large transfers
    // do not keep their memory for the life of the session.
    if (e.tainted || kept > retain) {
        doomed = std::move(e.blob);
        e.tainted = false;
    }
}

void StagingPool::taint_held() noexcept {
    std::lock_guard lk(mu);
    for (auto& e : entries)
        if (e.held) e.tainted = true;
}

size_t StagingPool::held() {
    std::lock_guard lk(mu);
    return static_cast<size_t>(
        std::count_if(entries.begin(), entries.end(), [](const Entry& e) { return e.held; }));
}

Expected<StagingPool::Lent> StagingPool::lend(size_t n, Create create, void* ctx) {
    constexpr size_t min_size = size_t{1} << 20;
    std::lock_guard lk(mu);
    constexpr size_t none = ~size_t{0};
    size_t fit = none, spare = none; // the smallest free blob that fits, a free slot
    for (size_t i = 0; i < entries.size(); ++i) {
        const auto& e = entries[i];
        if (e.held) continue;
        if (e.blob && e.blob.size() >= n) {
            if (fit == none || e.blob.size() < entries[fit].blob.size()) fit = i;
        } else if (spare == none) {
            spare = i;
        }
    }
    if (fit == none) {
        if (spare == none) {
            if (entries.size() >= entries.capacity())
                return fail(Errc::staging_exhausted,
                            fmt::format("{} staging blobs are held", entries.size()));
            entries.emplace_back();
            spare = entries.size() - 1;
        }
        auto& e = entries[spare];
        e.blob.reset(); // too small: replaced
        auto blob = create(ctx, std::max(n, min_size));
        if (!blob) return Unexpected{std::move(blob).error()};
        e.blob = std::move(*blob);
        prefault(e.blob.bytes());
        creates.fetch_add(1, std::memory_order_relaxed);
        fit = spare;
    }
    auto& e = entries[fit];
    e.held = true;
    return Lent{fit, e.blob.res_id(), e.blob.bytes().first(n)};
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
    Slot& s = type == CommandType::handshake      ? slots_[handshake_slot]
              : type == CommandType::load_library ? slots_[load_library_slot]
              : id < max_forward_ids              ? slots_[first_forward_slot + id]
                                                  : high_slot(id);
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
