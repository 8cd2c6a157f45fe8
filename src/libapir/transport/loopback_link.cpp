// The loopback link: shared memory in process memory, a peer inline or on a host thread.
#include "apir/loopback_link.hpp"

#include "apir/internal/futex.hpp"
#include "apir/internal/spin.hpp"

#include <array>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <vector>

#include <sys/mman.h>
#include <sys/prctl.h>

namespace apir {

namespace {
// Commands queued for the host thread before submit() waits (until its deadline).
constexpr size_t queue_depth = 64;
// The longest the idle host thread spins for the next command before it sleeps; it
// spins as long as the gaps between commands have lately been short enough for a spin
// to catch the next one (learned, SpinBudget), else not at all.
constexpr std::chrono::nanoseconds host_spin = std::chrono::microseconds(200);
} // namespace

struct APIR_LOCAL LoopbackLink::Impl final : HostMemory, ShmemOwner {
    // What this transport's Shmems release through; cut first in the destructor.
    const std::shared_ptr<ShmemLink> shmem_link = ShmemLink::make(*this);
    // The command ring: one producer at a time (submit_mu), one consumer (the host
    // thread), no lock between them. Command number p goes to slot p % slot_count,
    // published by storing seq = p + 1 after the bytes. The slot is the peer's until the
    // host thread reports, in `consumed`, that it has run the command (the peer decodes
    // it in place, LoopbackPeer::execute_in_place: no copy of its own); the guest reads
    // `consumed` only when the ring looks full. A small command sits beside its sequence
    // word, so it reaches the host thread in one cache-line transfer.
    struct alignas(64) Slot {
        static constexpr size_t inline_capacity = 240;
        static constexpr size_t keep_capacity = size_t{64} << 10; // larger: freed after use
        std::atomic<uint64_t> seq{0};
        uint32_t size = 0;
        int32_t cpu = -1; // the submitter's CPU
        std::byte small[inline_capacity];
        std::vector<std::byte> large; // commands that do not fit inline
    };

    Impl(const LoopbackPeerFactory& make_peer, LoopbackLinkOptions o) : options(std::move(o)) {
        if (make_peer) peer = make_peer(*this);
        if (!peer) {
            alive = false; // every submit fails with DISCONNECTED
            return;
        }
        type_offset = peer->command_type_offset();
        if (options.mode == LoopbackLinkOptions::Mode::threaded) {
            slot_count = queue_depth;
            slots = std::make_unique<Slot[]>(slot_count);
            thread = std::thread([this, ex = exit_] {
                serve();
                finished(*ex);
            });
        }
    }
    ~Impl() {
        shmem_link->disown(); // a Shmem destroyed after the transport does nothing
        stop();
        peer.reset(); // the backend's deinit may still look at shared memory
        std::lock_guard lk(mem_mu);
        for (auto& [id, b] : blobs)
            munmap(b.data(), b.size());
        for (auto b : unmap_later)
            munmap(b.data(), b.size());
        for (auto& c : table)
            delete[] c.load(std::memory_order_relaxed);
    }

    // --- HostMemory
    // Lock-free: the host looks up the reply page of every command. An id's entry is
    // set once when its blob is created and cleared when it is released (ids are never
    // reused), so a look-up sees the whole span or nothing.
    std::span<std::byte> resource(uint32_t res_id) noexcept override {
        if (res_id >= table_chunk * table_chunks) {
            std::lock_guard lk(mem_mu); // ids past the table: the map
            auto it = blobs.find(res_id);
            return it == blobs.end() ? std::span<std::byte>{} : it->second;
        }
        const TableEntry* chunk = table[res_id / table_chunk].load(std::memory_order_acquire);
        if (!chunk) return {};
        const TableEntry& e = chunk[res_id % table_chunk];
        std::byte* p = e.data.load(std::memory_order_seq_cst);
        return p ? std::span<std::byte>(p, e.size.load(std::memory_order_relaxed))
                 : std::span<std::byte>{};
    }
    void notify(std::span<std::byte> page, uint32_t code) noexcept override {
        notify_reply(page, code, &waiters);
    }

    // Caller holds mem_mu.
    void publish(uint32_t id, std::span<std::byte> bytes) {
        if (id >= table_chunk * table_chunks) return;
        auto& slot = table[id / table_chunk];
        TableEntry* chunk = slot.load(std::memory_order_relaxed);
        if (!chunk) {
            chunk = new TableEntry[table_chunk];
            slot.store(chunk, std::memory_order_release);
        }
        chunk[id % table_chunk].size.store(bytes.size(), std::memory_order_relaxed);
        chunk[id % table_chunk].data.store(bytes.data(), std::memory_order_seq_cst);
    }
    void unpublish(uint32_t id) {
        if (id >= table_chunk * table_chunks) return;
        if (TableEntry* chunk = table[id / table_chunk].load(std::memory_order_relaxed))
            chunk[id % table_chunk].data.store(nullptr, std::memory_order_seq_cst);
    }

    // --- ShmemOwner
    // Never waits for the host: the id is forgotten at once (a later command finds no
    // resource, and ids are never reused), and the mapping goes when no command that
    // may have looked it up is executing. Both sides are seq_cst: either the releaser
    // sees the command executing, or the command's look-up sees the id gone.
    void release_shmem(uint32_t res_id) noexcept override {
        std::span<std::byte> b;
        {
            std::lock_guard lk(mem_mu);
            auto it = blobs.find(res_id);
            if (it == blobs.end()) return;
            b = it->second;
            bytes_alive -= b.size();
            blobs.erase(it);
            unpublish(res_id);
            if (executing.load(std::memory_order_seq_cst) != 0) {
                unmap_later.push_back(b); // the executing command may hold the mapping
                pending_unmaps.store(true, std::memory_order_seq_cst);
                // The command may have ended meanwhile without seeing this one.
                if (executing.load(std::memory_order_seq_cst) == 0) drain_locked();
                return;
            }
        }
        munmap(b.data(), b.size());
    }
    // Caller holds mem_mu.
    void drain_locked() noexcept {
        for (auto x : unmap_later)
            munmap(x.data(), x.size());
        unmap_later.clear();
        pending_unmaps.store(false, std::memory_order_relaxed);
    }

    // Runs one command on the host (which serializes its commands): the caller's bytes
    // (inline), or a ring slot the peer may decode in place (threaded).
    template <class Bytes>
    void execute(Bytes cmd) {
        executing.fetch_add(1, std::memory_order_seq_cst);
        // A dropped command simply gets no reply.
        if constexpr (std::is_const_v<typename Bytes::element_type>)
            peer->execute(cmd);
        else
            peer->execute_in_place(cmd);
        if (executing.fetch_sub(1, std::memory_order_seq_cst) == 1 &&
            pending_unmaps.load(std::memory_order_seq_cst)) {
            std::lock_guard lk(mem_mu);
            if (executing.load(std::memory_order_seq_cst) == 0) drain_locked();
        }
    }

    Expected<Shmem> create_shmem(size_t size) {
        if (size == 0) return fail(Errc::invalid_argument, "shared memory of 0 bytes");
        if (size > options.max_shmem_bytes)
            return fail(Errc::out_of_memory, fmt::format("{} bytes exceeds the {} byte limit", size,
                                                         options.max_shmem_bytes));
        const size_t rounded = (size + shmem_alignment - 1) & ~(shmem_alignment - 1);
        {
            std::lock_guard lk(mem_mu);
            if (bytes_alive + rounded > options.max_shmem_bytes)
                return fail(Errc::out_of_memory,
                            fmt::format("{} bytes in use, {} more exceeds the {} byte limit",
                                        bytes_alive, rounded, options.max_shmem_bytes));
            bytes_alive += rounded;
        }
        void* p =
            mmap(nullptr, rounded, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        // Large blobs (bulk data) in huge pages where the kernel offers them: a 2 MiB
        // page is zeroed and mapped at once, so pre-faulting a new blob is cheap.
        if (p != MAP_FAILED && rounded >= huge_page) madvise(p, rounded, MADV_HUGEPAGE);
        std::lock_guard lk(mem_mu);
        if (p == MAP_FAILED) {
            bytes_alive -= rounded;
            return fail(
                Error(Errc::out_of_memory, "mmap of shared memory failed").with_errno(errno));
        }
        const uint32_t id = next_id++;
        std::span<std::byte> bytes(static_cast<std::byte*>(p), rounded);
        blobs.emplace(id, bytes);
        publish(id, bytes);
        return Shmem(shmem_link, id, bytes);
    }

    Expected<void> submit(std::span<const std::byte> cmd, Deadline deadline) {
        if (!alive.load(std::memory_order_acquire))
            return fail(Errc::disconnected, "the loopback host has stopped");
        if (options.mode == LoopbackLinkOptions::Mode::inline_host) {
            execute(cmd);
            return {};
        }
        // Producers (guest threads) take turns; the host thread never takes this lock.
        std::unique_lock lk(submit_mu);
        if (tail - consumed_seen >= slot_count) {
            // The ring looks full: look at the host's progress, wait if it is full.
            consumed_seen = consumed.load(std::memory_order_acquire);
            if (tail - consumed_seen >= slot_count) {
                producers_waiting.fetch_add(1, std::memory_order_seq_cst);
                auto room = [&] {
                    consumed_seen = consumed.load(std::memory_order_seq_cst);
                    return tail - consumed_seen < slot_count ||
                           !running.load(std::memory_order_acquire);
                };
                bool ok = true;
                if (deadline.is_never())
                    space_cv.wait(lk, room);
                else
                    ok = space_cv.wait_until(lk, deadline.time(), room);
                producers_waiting.fetch_sub(1, std::memory_order_relaxed);
                if (!ok)
                    return fail(Errc::timeout,
                                fmt::format("the host's queue of {} commands stayed full; the "
                                            "command was not sent",
                                            slot_count));
            }
        }
        if (!running.load(std::memory_order_acquire))
            return fail(Errc::disconnected, "the loopback host has stopped");
        Slot& s = slots[tail % slot_count];
        s.size = static_cast<uint32_t>(cmd.size());
        s.cpu = detail::current_cpu();
        if (cmd.size() <= Slot::inline_capacity)
            std::memcpy(s.small, cmd.data(), cmd.size());
        else
            s.large.assign(cmd.begin(), cmd.end()); // reuses the slot's capacity
        // Publish last; seq_cst pairs with the host's announcement that it sleeps.
        s.seq.store(tail + 1, std::memory_order_seq_cst);
        ++tail;
        lk.unlock();
        if (host_sleeping.load(std::memory_order_seq_cst)) {
            wake.fetch_add(1, std::memory_order_seq_cst);
            detail::futex_wake_all(&wake);
        }
        return {};
    }

    Expected<uint32_t> wait_reply(const Shmem& page, const WaitPolicy& policy, Deadline deadline) {
        if (options.mode == LoopbackLinkOptions::Mode::inline_host) {
            // The host ran inside submit(): no reply now means none will ever come.
            auto w = notification_word(page.bytes()).load(std::memory_order_acquire);
            if (w != 0) return w - 1;
            if (!alive.load()) return fail(Errc::disconnected, "the loopback host has stopped");
            return fail(Errc::timeout, "the host did not answer the command");
        }
        return wait_for_reply(page.bytes(), policy, deadline,
                              WaitHooks{&waiters, &alive, &guest_budget, &host_cpu});
    }

    // The host thread: execute the commands of the ring in order, without a lock. When
    // the next slot is empty: where the gaps between commands are regular enough for a
    // forecast (next_command), rest until shortly before the next one is due and watch
    // for it; else spin on its sequence word as long as the gaps have lately been short
    // enough for a spin to win (host_budget, at most host_spin). Then sleep until submit
    // wakes it.
    void serve() {
        // Rests are timed to the microsecond (the default slack of 50 µs would make each
        // one end up to that much late).
        prctl(PR_SET_TIMERSLACK, detail::wait_timer_slack_ns, 0, 0, 0);
        uint64_t head = 0;
        auto slept_since = Clock::time_point::min(); // the idle wait that ended in a sleep
        auto idle_since = Clock::time_point::min();  // the wait for the next command began
        bool rested = false;  // that wait rested by the forecast (the spin budget ignores it)
        bool learned = false; // the forecast has learned from it already
        const WaitClock& clock = WaitClock::system();
        std::atomic<int> guest_cpu{-1}; // where the last command came from
        auto stopping = [&] { return !running.load(std::memory_order_relaxed); };
        while (running.load(std::memory_order_acquire)) {
            Slot& s = slots[head % slot_count];
            auto ready = [&] { return s.seq.load(std::memory_order_acquire) == head + 1; };
            auto sleep = [&](std::chrono::nanoseconds d) {
                host_sleeping.store(1, std::memory_order_seq_cst);
                const uint32_t w = wake.load(std::memory_order_seq_cst);
                if (s.seq.load(std::memory_order_seq_cst) != head + 1 && running.load())
                    detail::futex_wait(&wake, w, d);
                host_sleeping.store(0, std::memory_order_relaxed);
            };
            if (!ready()) {
                note_cpu();
                if (idle_since == Clock::time_point::min()) {
                    // The first look after a command: rest by the forecast of the next.
                    const auto r = detail::rest_then_watch(next_command, next_command.plan(), clock,
                                                           Deadline::never(), &guest_cpu, false,
                                                           ready, sleep, stopping);
                    rested = r.rested;
                    learned = r.done;
                    idle_since = r.rested ? r.start : clock.now();
                    continue;
                }
                if (!rested && slept_since == Clock::time_point::min()) {
                    detail::SpinPlan plan;
                    plan.peer_cpu = &guest_cpu;
                    plan.budget = host_budget.next(host_spin);
                    plan.clock = &clock;
                    const auto spun = detail::spin(plan, ready, stopping);
                    if (spun.done) {
                        host_budget.won(spun.start == Clock::time_point::min()
                                            ? std::chrono::nanoseconds::zero()
                                            : clock.now() - spun.start,
                                        host_spin);
                        continue;
                    }
                }
                if (slept_since == Clock::time_point::min()) slept_since = clock.now();
                sleep(std::chrono::milliseconds(100));
                note_cpu();
                continue;
            }
            if (idle_since != Clock::time_point::min()) {
                const auto now = clock.now();
                // The gap a spin would have had to cover to catch this command.
                if (slept_since != Clock::time_point::min() && !rested)
                    host_budget.lost(now - idle_since, host_spin);
                if (!learned) next_command.observe(now - idle_since);
                idle_since = slept_since = Clock::time_point::min();
                rested = learned = false;
            }
            guest_cpu.store(s.cpu, std::memory_order_relaxed);
            execute(s.size <= Slot::inline_capacity ? std::span<std::byte>(s.small, s.size)
                                                    : std::span<std::byte>(s.large));
            // Bounded retention: a large command does not keep its memory in the slot.
            if (s.large.capacity() > Slot::keep_capacity) std::vector<std::byte>().swap(s.large);
            // Report progress after the reply is out, off the guest's critical path, on
            // a line of its own: the guest reads it only when the ring looks full.
            consumed.store(++head, std::memory_order_seq_cst);
            if (producers_waiting.load(std::memory_order_seq_cst) != 0) {
                { std::lock_guard lk(submit_mu); }
                space_cv.notify_all();
            }
        }
    }

    // Written only when it changed: the guests read it while they spin.
    void note_cpu() {
        const int cpu = detail::current_cpu();
        if (host_cpu.load(std::memory_order_relaxed) != cpu)
            host_cpu.store(cpu, std::memory_order_relaxed);
    }

    // Where the host thread and the link's owner meet when the thread ends: shared,
    // so that neither touches the other's memory after the hand-over.
    struct Exit {
        std::mutex mu;
        std::condition_variable cv;
        enum class State : uint8_t { running, exited, abandoned } state = State::running;
    };

    // The host thread's last act: report that it returned, or, when the owner gave up
    // on it (the link is gone), free what it was kept alive for.
    void finished(Exit& ex) noexcept {
        std::unique_lock lk(ex.mu);
        if (ex.state == Exit::State::abandoned) {
            lk.unlock();
            delete this; // the destructor's join is skipped: the thread is detached
            return;
        }
        ex.state = Exit::State::exited;
        ex.cv.notify_all();
    }

    // For the destructor: true when the host thread is abandoned and now owns this
    // state (it frees it when it returns); false when the state can be freed now.
    bool hand_over() noexcept {
        shmem_link->disown(); // a Shmem destroyed after the transport does nothing
        stop();
        if (!abandoned) return false;
        std::lock_guard lk(exit_->mu);
        if (exit_->state == Exit::State::exited) return false; // it came back meanwhile
        exit_->state = Exit::State::abandoned;
        return true;
    }

    void stop() {
        if (!alive.exchange(false)) return;
        {
            std::lock_guard lk(submit_mu);
            running = false;
        }
        space_cv.notify_all();
        if (thread.joinable()) {
            wake.fetch_add(1); // wake the host thread so it notices
            detail::futex_wake_all(&wake);
            bool back = false;
            {
                std::unique_lock lk(exit_->mu);
                back = exit_->cv.wait_for(lk, options.stop_grace,
                                          [&] { return exit_->state == Exit::State::exited; });
            }
            if (back) {
                thread.join();
            } else {
                // Stuck in the peer (a backend call that does not return): never joined.
                thread.detach();
                abandoned = true;
                options.logger.warn(
                    "loopback: the host thread did not come back within {} ms (stuck in a "
                    "command); it is abandoned, and what it uses stays allocated until it "
                    "returns",
                    options.stop_grace.count());
            }
        }
        // Wake guests blocked on any page so they see the host is gone.
        std::lock_guard lk(mem_mu);
        for (auto& [id, b] : blobs)
            detail::futex_wake_all(b.data());
    }

    // What the guest and the host thread each write on every call lives on cache lines
    // of its own: a line written by both would travel between the cores twice a call.
    LoopbackLinkOptions options; // read by both, written by neither
    int32_t type_offset = 0;     // the peer's command_type_offset()
    std::unique_ptr<Slot[]> slots;
    size_t slot_count = 0;
    std::atomic<uint32_t> waiters{0}; // guests blocked on a notification word
    std::atomic<bool> alive{true};
    std::atomic<bool> running{true};
    std::atomic<uint32_t> producers_waiting{0}; // guests waiting for a free slot
    std::atomic<uint32_t> host_sleeping{0};
    std::atomic<uint32_t> wake{0};       // futex word the sleeping host thread waits on
    alignas(64) SpinBudget guest_budget; // how long the guests' waits spin
    std::atomic<int> host_cpu{-1};       // the CPU the host thread last ran on
    alignas(64) SpinBudget host_budget;  // how long the host thread's idle wait spins
    ArrivalForecast next_command;        // when, after a command, the next one comes

    // Memory first: the host (and its backend's deinit) goes before the blobs.
    alignas(64) mutable std::mutex mem_mu; // taken by the host on every command
    std::unordered_map<uint32_t, std::span<std::byte>> blobs;
    size_t bytes_alive = 0;
    std::vector<std::span<std::byte>> unmap_later; // released while one was running
    // The lock-free index of blobs by id (ids below table_chunk * table_chunks).
    struct TableEntry {
        std::atomic<std::byte*> data{nullptr};
        std::atomic<size_t> size{0};
    };
    static constexpr size_t table_chunk = 4096, table_chunks = 256;
    static constexpr size_t huge_page = size_t{2} << 20;
    std::array<std::atomic<TableEntry*>, table_chunks> table{};
    alignas(64) std::atomic<uint32_t> executing{0}; // commands running on the host
    std::atomic<bool> pending_unmaps{false};        // unmap_later is not empty
    uint32_t next_id = 2; // like the kernel: ids start at 2 and are never reused
    alignas(64) std::atomic<uint64_t> consumed{0}; // commands the host thread has run
    alignas(64) std::mutex submit_mu;              // the guest side of the ring
    std::condition_variable space_cv;
    uint64_t tail = 0;          // commands submitted; under submit_mu
    uint64_t consumed_seen = 0; // the last value of `consumed` read; under submit_mu

    alignas(64) std::unique_ptr<LoopbackPeer> peer; // not beside tail: read every command
    std::thread thread;
    std::shared_ptr<Exit> exit_ = std::make_shared<Exit>();
    std::atomic<bool> abandoned{false}; // the host thread did not come back in stop()
};

void LoopbackLink::ImplDeleter::operator()(Impl* impl) const noexcept {
    if (!impl->hand_over()) delete impl;
}

LoopbackLink::LoopbackLink(LoopbackPeerFactory make_peer, LoopbackLinkOptions options)
    : impl_(new Impl(make_peer, std::move(options))) {}
LoopbackLink::LoopbackLink(LoopbackLink&&) noexcept = default;
LoopbackLink& LoopbackLink::operator=(LoopbackLink&&) noexcept = default;
LoopbackLink::~LoopbackLink() = default;

namespace {
Unexpected moved_from() {
    return fail(Errc::disconnected, "the loopback transport was moved from");
}
} // namespace

Expected<Shmem> LoopbackLink::create_shmem(size_t size) {
    if (!impl_) return moved_from();
    return impl_->create_shmem(size);
}
Expected<void> LoopbackLink::submit(std::span<const std::byte> command, uint32_t,
                                    Deadline deadline) {
    if (!impl_) return moved_from();
    return impl_->submit(command, deadline);
}
Expected<uint32_t> LoopbackLink::wait_reply(const Shmem& page, const WaitPolicy& policy,
                                            Deadline deadline) {
    if (!impl_) return moved_from();
    return impl_->wait_reply(page, policy, deadline);
}
int32_t LoopbackLink::command_type_offset() const noexcept {
    return impl_ ? impl_->type_offset : 0;
}
std::string_view LoopbackLink::name() const noexcept {
    if (!impl_) return "moved-from";
    return impl_->options.mode == LoopbackLinkOptions::Mode::threaded ? "loopback-threaded"
                                                                      : "loopback-inline";
}
LoopbackPeer* LoopbackLink::peer() noexcept {
    return impl_ ? impl_->peer.get() : nullptr;
}
TransportDiagnostics* LoopbackLink::diagnostics() noexcept {
    return peer();
}
void LoopbackLink::stop_host() {
    if (impl_) impl_->stop();
}
bool LoopbackLink::host_abandoned() const noexcept {
    return impl_ && impl_->abandoned.load();
}
size_t LoopbackLink::shmem_count() const noexcept {
    if (!impl_) return 0;
    std::lock_guard lk(impl_->mem_mu);
    return impl_->blobs.size();
}
size_t LoopbackLink::shmem_bytes() const noexcept {
    if (!impl_) return 0;
    std::lock_guard lk(impl_->mem_mu);
    return impl_->bytes_alive;
}

} // namespace apir
