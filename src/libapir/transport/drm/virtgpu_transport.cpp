// VirtgpuTransport: context creation, blob shared memory with a bounded cache, EXECBUFFER.
#include "apir/internal/virtgpu_probe.hpp"
#include "apir/reply_page.hpp"

#include <climits>
#include <cstring>
#include <deque>
#include <mutex>
#include <unordered_map>
#include <vector>

namespace apir {

namespace {

/// A mappable HOST3D blob: GEM handle, resource id and mapping. Unmapped, then closed.
struct Blob {
    drm::GemHandle gem; // destroyed last: GEM_CLOSE after munmap
    drm::Mapping mapping;
    uint32_t res_id = 0;
    uint64_t reply_seq = 0; // the last command that named it as its reply page
    [[nodiscard]] size_t size() const noexcept { return mapping.get().size; }
};

// A released blob that commands up to `tag` may still name: not reused before the host
// is known to have executed them.
struct Quarantined {
    uint64_t tag = 0;
    Blob blob;
};

} // namespace

namespace {
// Blobs smaller than this are not cached: those are reply pages, which a session pools
// itself, and a timed-out page may still receive a late reply.
constexpr size_t shmem_cache_min_size = size_t{64} << 10;
} // namespace

struct APIR_LOCAL VirtgpuTransport::Impl final : ShmemOwner {
    // What this transport's Shmems release through; cut first in the destructor.
    const std::shared_ptr<ShmemLink> shmem_link = ShmemLink::make(*this);
    Impl(VirtgpuOptions o, std::shared_ptr<DrmDevice> d, drm::UniqueFd f, VirtgpuNodeReport r)
        : options(std::move(o)), dev(std::move(d)), fd(std::move(f)), report(std::move(r)),
          capset(report.capset->id) {}
    ~Impl() {
        shmem_link->disown(); // a Shmem destroyed after the transport does nothing
        std::lock_guard lk(mu);
        if (!live.empty())
            options.logger.warn("virtgpu: {} shared-memory blobs outlive their transport",
                                live.size());
        // Blobs go before the fd (member order), so GEM_CLOSE still has its file.
    }

    // --- ShmemOwner
    // The host runs a context's commands in order, one at a time: once the reply to
    // command k is seen, commands 1..k are done. A released blob that a command not
    // yet known done may name (a call that timed out) is quarantined, never cached.
    void release_shmem(uint32_t res_id) noexcept override {
        std::vector<Blob> doomed; // destroyed outside the lock
        {
            std::lock_guard lk(mu);
            auto it = live.find(res_id);
            if (it == live.end()) return;
            Blob b = std::move(it->second);
            live.erase(it);
            live_bytes -= b.size();
            if (!cacheable(b.size())) {
                doomed.push_back(std::move(b));
            } else if (submitted > completed) {
                quarantined_bytes += b.size();
                quarantine.push_back(Quarantined{submitted, std::move(b)});
                while (quarantined_bytes > options.shmem_cache_bytes ||
                       quarantine.size() > options.shmem_cache_blobs) {
                    // Destroyed, not reused: the host's late write finds no mapping.
                    quarantined_bytes -= quarantine.front().blob.size();
                    doomed.push_back(std::move(quarantine.front().blob));
                    quarantine.pop_front();
                    ++stats.cache_evictions;
                }
            } else {
                cache_locked(std::move(b), doomed);
            }
            stats.blobs_destroyed += doomed.size();
        }
    }

    [[nodiscard]] bool cacheable(size_t n) const noexcept {
        return n >= shmem_cache_min_size && n <= options.shmem_cache_bytes &&
               options.shmem_cache_blobs > 0;
    }
    // Caller holds mu.
    void cache_locked(Blob b, std::vector<Blob>& doomed) {
        cached_bytes += b.size();
        cache.push_back(std::move(b)); // most recently used at the back
        while (cached_bytes > options.shmem_cache_bytes ||
               cache.size() > options.shmem_cache_blobs) {
            cached_bytes -= cache.front().size();
            doomed.push_back(std::move(cache.front()));
            cache.pop_front();
            ++stats.cache_evictions;
        }
    }

    // A reply arrived on a page: the host is done with every command up to the one
    // that named it. Quarantined blobs those were the last to name are reusable.
    void reply_seen(uint32_t page_id) noexcept {
        std::vector<Blob> doomed;
        std::lock_guard lk(mu);
        auto it = live.find(page_id);
        if (it == live.end() || it->second.reply_seq <= completed) return;
        completed = it->second.reply_seq;
        while (!quarantine.empty() && quarantine.front().tag <= completed) {
            quarantined_bytes -= quarantine.front().blob.size();
            cache_locked(std::move(quarantine.front().blob), doomed);
            quarantine.pop_front();
        }
        stats.blobs_destroyed += doomed.size();
    }

    Expected<Shmem> create_shmem(size_t size) {
        if (size == 0) return fail(Errc::invalid_argument, "shared memory of 0 bytes");
        if (size > SIZE_MAX - shmem_alignment)
            return fail(Errc::out_of_memory, fmt::format("{} bytes of shared memory", size));
        const size_t rounded = (size + shmem_alignment - 1) & ~(shmem_alignment - 1);
        if (auto reused = take_cached(rounded)) return std::move(*reused);

        auto blob = create_blob(rounded);
        if (!blob && blob.error().code() == Errc::out_of_memory && trim() > 0)
            blob = create_blob(rounded); // the cache held the space the host needed
        if (!blob) return Unexpected{std::move(blob).error()};

        std::lock_guard lk(mu);
        ++stats.blobs_created;
        return hand_out(std::move(*blob), rounded);
    }

    Expected<void> submit(std::span<const std::byte> command, uint32_t reply_id) {
        if (command.size() > INT_MAX)
            return fail(
                Errc::invalid_argument,
                fmt::format("{} byte command exceeds what EXECBUFFER takes", command.size()));
        // Numbered in the order the host receives them (one EXECBUFFER at a time).
        std::lock_guard order(submit_mu);
        if (int r = drm::ioctl_execbuffer(*dev, fd.get(), command); r < 0)
            return fail(drm::sys_error(drm::Syscall::execbuffer, -r,
                                       fmt::format("({} bytes, ring 0)", command.size())));
        submits.fetch_add(1, std::memory_order_relaxed);
        std::lock_guard lk(mu);
        ++submitted;
        if (auto it = live.find(reply_id); it != live.end()) it->second.reply_seq = submitted;
        return {};
    }

    // The best-fitting cached blob: large enough, at most twice the size asked for (a
    // 24 MiB data blob must not serve as a 16 KiB page).
    std::optional<Shmem> take_cached(size_t rounded) {
        std::lock_guard lk(mu);
        auto best = cache.end();
        for (auto it = cache.begin(); it != cache.end(); ++it) {
            const size_t n = it->size();
            if (n >= rounded && n / 2 <= rounded && (best == cache.end() || n < best->size()))
                best = it;
        }
        if (best == cache.end()) return std::nullopt;
        Blob b = std::move(*best);
        cache.erase(best);
        cached_bytes -= b.size();
        ++stats.blobs_reused;
        return hand_out(std::move(b), rounded);
    }

    // Caller holds mu.
    Shmem hand_out(Blob b, size_t rounded) {
        const uint32_t id = b.res_id;
        std::span<std::byte> bytes(b.mapping.get().data(), rounded);
        live_bytes += b.size();
        live.emplace(id, std::move(b));
        return Shmem(shmem_link, id, bytes);
    }

    // RESOURCE_CREATE_BLOB → MAP → mmap; whatever succeeded is undone on failure.
    Expected<Blob> create_blob(size_t size) {
        const int f = fd.get();
        uint32_t handle = 0, res_id = 0;
        if (int r = drm::ioctl_resource_create_blob(*dev, f, size, handle, res_id); r < 0)
            return fail(drm::sys_error(drm::Syscall::resource_create_blob, -r,
                                       fmt::format("(HOST3D, mappable, {} bytes)", size)));
        Blob b;
        b.gem = drm::GemHandle(handle, {dev.get(), f});
        b.res_id = res_id;
        uint64_t offset = 0;
        if (int r = drm::ioctl_map(*dev, f, handle, offset); r < 0)
            return fail(drm::sys_error(drm::Syscall::map, -r,
                                       fmt::format("(handle {}, resource {})", handle, res_id)));
        void* addr = nullptr;
        if (int r = drm::sys_mmap(*dev, f, offset, size, &addr); r < 0)
            return fail(drm::sys_error(
                drm::Syscall::mmap, -r,
                fmt::format("({} bytes at offset {:#x}, resource {})", size, offset, res_id)));
        b.mapping = drm::Mapping({addr, size}, {dev.get()});
        return b;
    }

    // Destroys the cached blobs, and the quarantined ones (destroyed, not reused).
    size_t trim() noexcept {
        std::deque<Blob> doomed;
        std::deque<Quarantined> doomed_q;
        {
            std::lock_guard lk(mu);
            doomed.swap(cache);
            doomed_q.swap(quarantine);
            cached_bytes = 0;
            quarantined_bytes = 0;
            const size_t n = doomed.size() + doomed_q.size();
            stats.cache_evictions += n;
            stats.blobs_destroyed += n;
        }
        return doomed.size() + doomed_q.size();
    }

    VirtgpuOptions options;
    std::shared_ptr<DrmDevice> dev; // outlives everything below
    drm::UniqueFd fd;
    VirtgpuNodeReport report;
    uint32_t capset;
    std::atomic<uint64_t> submits{0};
    SpinBudget wait_budget; // how long the callers' waits spin, learned
    std::mutex submit_mu;   // one EXECBUFFER at a time, numbered in order

    mutable std::mutex mu;
    std::unordered_map<uint32_t, Blob> live;
    std::deque<Blob> cache;
    std::deque<Quarantined> quarantine; // oldest first
    size_t live_bytes = 0;
    size_t cached_bytes = 0;
    size_t quarantined_bytes = 0;
    uint64_t submitted = 0; // commands handed to the host
    uint64_t completed = 0; // commands the host is known to have executed
    VirtgpuStats stats;
};

Expected<VirtgpuTransport> VirtgpuTransport::open(VirtgpuOptions options) {
    auto dev = options.device ? options.device : system_drm_device();
    auto nodes = drm::nodes_to_probe(*dev, options);
    if (!nodes) return Unexpected{std::move(nodes).error()};

    std::vector<VirtgpuNodeReport> reports;
    for (const auto& node : *nodes) {
        VirtgpuNodeReport report;
        drm::UniqueFd fd = drm::probe_node(*dev, node, options, report);
        if (fd) {
            // First context-creating call on this file. A failed attempt is not rolled
            // back by the kernel, so the fd is closed rather than retried.
            const uint32_t capset = report.capset->id;
            if (int r = drm::ioctl_context_init(*dev, fd.get(), capset, 1); r < 0) {
                report.error = drm::sys_error(drm::Syscall::context_init, -r,
                                              fmt::format("(capset {} {}, 1 ring, no polled ring)",
                                                          capset, capset_name(capset)));
            } else {
                options.logger.info("virtgpu: using {} ({}) with capset {} ({}): {}", node.path,
                                    node.bus, capset, capset_name(capset), report.capset->reason);
                if (capset == capset_venus)
                    options.logger.warn("virtgpu: Venus transition mode (command types + {}): the "
                                        "host must route Venus to APIR",
                                        venus_command_offset);
                auto impl = std::make_unique<Impl>(std::move(options), std::move(dev),
                                                   std::move(fd), std::move(report));
                return VirtgpuTransport(std::move(impl));
            }
        }
        options.logger.info("virtgpu: skipped {}: {}", node.path, *report.error);
        reports.push_back(std::move(report));
    }
    return fail(drm::no_usable_node(reports));
}

VirtgpuTransport::VirtgpuTransport(std::unique_ptr<Impl> impl) noexcept : impl_(std::move(impl)) {}
VirtgpuTransport::VirtgpuTransport(VirtgpuTransport&&) noexcept = default;
VirtgpuTransport& VirtgpuTransport::operator=(VirtgpuTransport&&) noexcept = default;
VirtgpuTransport::~VirtgpuTransport() = default;

namespace {
Unexpected moved_from() {
    return fail(Errc::disconnected, "the virtgpu transport was moved from");
}
} // namespace

Expected<Shmem> VirtgpuTransport::create_shmem(size_t size) {
    if (!impl_) return moved_from();
    return impl_->create_shmem(size);
}
Expected<void> VirtgpuTransport::submit(std::span<const std::byte> command, uint32_t reply_res_id,
                                        Deadline) {
    if (!impl_) return moved_from();
    return impl_->submit(command, reply_res_id);
}
Expected<uint32_t> VirtgpuTransport::wait_reply(const Shmem& page, const WaitPolicy& policy,
                                                Deadline deadline) {
    if (!impl_) return moved_from();
    // A remote host cannot wake this thread: no sleepers, only polling, with a spin
    // and a first sleep learned from the replies so far.
    auto r = wait_for_reply(page.bytes(), policy, deadline,
                            WaitHooks{nullptr, impl_->dev->host_alive(), &impl_->wait_budget});
    if (r) impl_->reply_seen(page.res_id());
    return r;
}
int32_t VirtgpuTransport::command_type_offset() const noexcept {
    return impl_ && impl_->capset == capset_venus ? venus_command_offset : 0;
}
std::string_view VirtgpuTransport::name() const noexcept {
    if (!impl_) return "moved-from";
    return impl_->capset == capset_venus ? "virtgpu-venus" : "virtgpu";
}
const VirtgpuNodeReport& VirtgpuTransport::device() const noexcept {
    return impl_->report;
}
uint32_t VirtgpuTransport::capset_id() const noexcept {
    return impl_ ? impl_->capset : 0;
}
VirtgpuStats VirtgpuTransport::stats() const noexcept {
    if (!impl_) return {};
    std::lock_guard lk(impl_->mu);
    VirtgpuStats s = impl_->stats;
    s.live_blobs = impl_->live.size();
    s.live_bytes = impl_->live_bytes;
    s.cached_blobs = impl_->cache.size();
    s.cached_bytes = impl_->cached_bytes;
    s.quarantined_blobs = impl_->quarantine.size();
    s.quarantined_bytes = impl_->quarantined_bytes;
    s.submits = impl_->submits.load(std::memory_order_relaxed);
    return s;
}
void VirtgpuTransport::trim_shmem_cache() noexcept {
    if (impl_) (void)impl_->trim();
}

} // namespace apir
