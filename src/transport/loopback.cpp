// The loopback transport: shared memory in process memory, a host inline or on a thread.
#include "apir/loopback.hpp"

#include "futex.hpp"

#include <condition_variable>
#include <mutex>
#include <optional>
#include <thread>
#include <unordered_map>
#include <vector>

#include <sys/mman.h>

namespace apir {

struct LoopbackTransport::Impl final : HostMemory, ShmemOwner {
    explicit Impl(LoopbackOptions o) : options(std::move(o)) {
        host.emplace(options.host, *this);
        if (options.queue_depth == 0) options.queue_depth = 1;
        if (options.mode == LoopbackOptions::Mode::threaded) {
            slots.resize(options.queue_depth);
            thread = std::thread([this] { serve(); });
        }
    }
    ~Impl() {
        stop();
        host.reset(); // the backend's deinit may still look at shared memory
        std::lock_guard lk(mem_mu);
        for (auto& [id, b] : blobs)
            munmap(b.data(), b.size());
    }

    // --- HostMemory
    std::span<std::byte> resource(uint32_t res_id) noexcept override {
        std::lock_guard lk(mem_mu);
        auto it = blobs.find(res_id);
        return it == blobs.end() ? std::span<std::byte>{} : it->second;
    }
    std::atomic<uint32_t>* sleepers() noexcept override { return &waiters; }

    // --- ShmemOwner
    void release_shmem(uint32_t res_id) noexcept override {
        std::span<std::byte> b;
        {
            std::lock_guard lk(mem_mu);
            auto it = blobs.find(res_id);
            if (it == blobs.end()) return;
            b = it->second;
            bytes_alive -= b.size();
            blobs.erase(it);
        }
        // A command already executing may still hold the mapping: let it finish.
        std::lock_guard ex(exec_mu);
        munmap(b.data(), b.size());
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
        std::lock_guard lk(mem_mu);
        if (p == MAP_FAILED) {
            bytes_alive -= rounded;
            return fail(
                Error(Errc::out_of_memory, "mmap of shared memory failed").with_errno(errno));
        }
        const uint32_t id = next_id++;
        std::span<std::byte> bytes(static_cast<std::byte*>(p), rounded);
        blobs.emplace(id, bytes);
        return Shmem(this, id, bytes);
    }

    Expected<void> submit(std::span<const std::byte> cmd) {
        if (!alive.load(std::memory_order_acquire))
            return fail(Errc::disconnected, "the loopback host has stopped");
        if (options.deliver && !options.deliver(cmd)) return {};
        if (options.mode == LoopbackOptions::Mode::inline_host) {
            std::lock_guard ex(exec_mu);
            (void)host->execute(cmd); // a dropped command simply gets no reply
            return {};
        }
        {
            std::unique_lock lk(q_mu);
            space_cv.wait(lk, [&] { return count < slots.size() || !running; });
            if (!running) return fail(Errc::disconnected, "the loopback host has stopped");
            slots[tail].assign(cmd.begin(), cmd.end()); // reuses the slot's capacity
            tail = (tail + 1) % slots.size();
            ++count;
        }
        pending.fetch_add(1, std::memory_order_seq_cst);
        if (host_sleeping.load(std::memory_order_seq_cst)) detail::futex_wake_all(&pending);
        return {};
    }

    Expected<uint32_t> wait_reply(const Shmem& page, const WaitPolicy& policy, Deadline deadline) {
        if (options.mode == LoopbackOptions::Mode::inline_host) {
            // The host ran inside submit(): no reply now means none will ever come.
            auto w = notification_word(page.bytes()).load(std::memory_order_acquire);
            if (w != 0) return w - 1;
            if (!alive.load()) return fail(Errc::disconnected, "the loopback host has stopped");
            return fail(Errc::timeout, "the host did not answer the command");
        }
        return wait_for_reply(page.bytes(), policy, deadline, WaitHooks{&waiters, &alive});
    }

    // The host thread: take a command, execute it; spin briefly when idle, then sleep.
    void serve() {
        std::vector<std::byte> cmd;
        while (running.load(std::memory_order_acquire)) {
            if (pending.load(std::memory_order_acquire) == 0) {
                const auto spin_until = Clock::now() + options.host_spin;
                while (pending.load(std::memory_order_acquire) == 0 && Clock::now() < spin_until &&
                       running.load(std::memory_order_relaxed)) {
                }
                if (pending.load(std::memory_order_acquire) == 0) {
                    host_sleeping.store(1, std::memory_order_seq_cst);
                    if (pending.load(std::memory_order_seq_cst) == 0 && running.load())
                        detail::futex_wait(&pending, 0, std::chrono::milliseconds(100));
                    host_sleeping.store(0, std::memory_order_seq_cst);
                }
                continue;
            }
            {
                std::lock_guard lk(q_mu);
                if (count == 0) continue; // the wake-up of stop()
                std::swap(cmd, slots[head]);
                head = (head + 1) % slots.size();
                --count;
            }
            space_cv.notify_one();
            pending.fetch_sub(1, std::memory_order_acq_rel);
            std::lock_guard ex(exec_mu);
            (void)host->execute(cmd);
        }
    }

    void stop() {
        if (!alive.exchange(false)) return;
        {
            std::lock_guard lk(q_mu);
            running = false;
        }
        space_cv.notify_all();
        if (thread.joinable()) {
            pending.fetch_add(1); // wake the host thread so it notices
            detail::futex_wake_all(&pending);
            thread.join();
        }
        // Wake guests blocked on any page so they see the host is gone.
        std::lock_guard lk(mem_mu);
        for (auto& [id, b] : blobs)
            detail::futex_wake_all(b.data());
    }

    LoopbackOptions options;
    // Memory first: the host (and its backend's deinit) goes before the blobs.
    mutable std::mutex mem_mu;
    std::unordered_map<uint32_t, std::span<std::byte>> blobs;
    size_t bytes_alive = 0;
    uint32_t next_id = 2; // like the kernel: ids start at 2 and are never reused
    std::mutex exec_mu;   // held while the host executes a command
    std::atomic<uint32_t> waiters{0};
    std::atomic<bool> alive{true};
    std::atomic<bool> running{true};

    std::mutex q_mu;
    std::condition_variable space_cv;
    std::vector<std::vector<std::byte>> slots;
    size_t head = 0, tail = 0, count = 0;
    std::atomic<uint32_t> pending{0};
    std::atomic<uint32_t> host_sleeping{0};

    std::optional<Host> host;
    std::thread thread;
};

LoopbackTransport::LoopbackTransport(LoopbackOptions options)
    : impl_(std::make_unique<Impl>(std::move(options))) {}
LoopbackTransport::LoopbackTransport(LoopbackTransport&&) noexcept = default;
LoopbackTransport& LoopbackTransport::operator=(LoopbackTransport&&) noexcept = default;
LoopbackTransport::~LoopbackTransport() = default;

Expected<Shmem> LoopbackTransport::create_shmem(size_t size) {
    return impl_->create_shmem(size);
}
Expected<void> LoopbackTransport::submit(std::span<const std::byte> command) {
    return impl_->submit(command);
}
Expected<uint32_t> LoopbackTransport::wait_reply(const Shmem& page, const WaitPolicy& policy,
                                                 Deadline deadline) {
    return impl_->wait_reply(page, policy, deadline);
}
int32_t LoopbackTransport::command_type_offset() const noexcept {
    return impl_->options.host.command_type_offset;
}
std::string_view LoopbackTransport::name() const noexcept {
    return impl_->options.mode == LoopbackOptions::Mode::threaded ? "loopback-threaded"
                                                                  : "loopback-inline";
}
Host& LoopbackTransport::host() noexcept {
    return *impl_->host;
}
void LoopbackTransport::stop_host() {
    impl_->stop();
}
size_t LoopbackTransport::shmem_count() const noexcept {
    std::lock_guard lk(impl_->mem_mu);
    return impl_->blobs.size();
}
size_t LoopbackTransport::shmem_bytes() const noexcept {
    std::lock_guard lk(impl_->mem_mu);
    return impl_->bytes_alive;
}

} // namespace apir
