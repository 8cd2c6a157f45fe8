// The simulated virtio-gpu device: Linux's answers to each ioctl, memfd-backed blobs,
// and an apir::Host per APIR/Venus context.
#include "apir/sim/sim_device.hpp"

#include "apir/internal/unique_handle.hpp"
#include "apir/internal/virtgpu_ioctl.hpp"
#include "apir/internal/virtgpu_uapi.hpp"

#include <algorithm>
#include <cerrno>
#include <climits>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <optional>
#include <thread>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <unistd.h>

namespace apir {
namespace {

constexpr uint64_t page_size = 4096;
// Fake mmap offsets start at 4 GiB, as DRM's on 64-bit.
constexpr uint64_t first_mmap_offset = uint64_t{1} << 32;
// Fake fds: never real descriptors, so a transport that bypasses the seam fails loudly.
constexpr int first_fd = 1000;
// Resource ids come from one device-wide counter starting at 2 and are never reused.
constexpr uint32_t first_res_id = 2;
constexpr uint64_t max_capset_id = 63;
constexpr uint64_t max_rings = 64;

// The system calls whose failures the transport reports (drm::Syscall) are steps of the
// device (SimOp), so that a test can make each of them fail. SimOp has more: the
// releases (close, GEM_CLOSE, munmap), whose failures the transport ignores. A call
// added to drm::Syscall without its step here is a -Wswitch error.
constexpr SimOp step_of(drm::Syscall c) {
    switch (c) {
    case drm::Syscall::enumerate:
        return SimOp::enumerate;
    case drm::Syscall::open:
        return SimOp::open;
    case drm::Syscall::version:
        return SimOp::version;
    case drm::Syscall::getparam:
        return SimOp::getparam;
    case drm::Syscall::get_caps:
        return SimOp::get_caps;
    case drm::Syscall::context_init:
        return SimOp::context_init;
    case drm::Syscall::resource_create_blob:
        return SimOp::create_blob;
    case drm::Syscall::map:
        return SimOp::map;
    case drm::Syscall::mmap:
        return SimOp::mmap;
    case drm::Syscall::execbuffer:
        return SimOp::execbuffer;
    }
    return SimOp::count_;
}
static_assert(step_of(drm::Syscall::resource_create_blob) == SimOp::create_blob);

uint64_t page_align(uint64_t n) {
    return (n + page_size - 1) & ~(page_size - 1);
}

// EXECBUFFER as Linux 6.12 has it; a caller's 40-byte struct arrives zero-extended.
struct KernelExecbuffer {
    uint32_t flags;
    uint32_t size;
    uint64_t command;
    uint64_t bo_handles;
    uint32_t num_bo_handles;
    int32_t fence_fd;
    uint32_t ring_idx;
    uint32_t syncobj_stride;
    uint32_t num_in_syncobjs;
    uint32_t num_out_syncobjs;
    uint64_t in_syncobjs;
    uint64_t out_syncobjs;
};
static_assert(sizeof(KernelExecbuffer) == 64);
static_assert(offsetof(KernelExecbuffer, ring_idx) == offsetof(uapi::execbuffer, ring_idx));

// The size of an ioctl's struct in the kernel the device imitates: what the DRM core
// copies at most, in and out.
template <class T>
size_t kernel_size(SimKernel) {
    return sizeof(T);
}
template <>
size_t kernel_size<KernelExecbuffer>(SimKernel k) {
    return k == SimKernel::linux_6_1 ? 40 : sizeof(KernelExecbuffer);
}

// Host-side memory of a blob: a memfd and the host's own mapping of it. The guest's
// mmap maps the same pages a second time, as a VM's would.
struct Memory {
    apir::detail::PosixFd fd;
    apir::detail::PosixMapping host; // unmapped before the fd is closed
};

// What the device and its host threads share; it outlives the device while a host
// thread that did not come back still runs.
struct Shared {
    std::atomic<bool> host_alive{true};
    std::atomic<uint64_t> executed{0};
};

// The host end of one guest context: an apir::Host on its own thread. A thread, like
// the real device: EXECBUFFER returns once the command is queued and the host answers
// later, so the guest really waits on the notification word (an inline host would
// answer before submit() returns and hide ordering bugs in the wait). Blob releases go
// through the same queue, so a command always finds the memory it was sent with.
//
// What the thread uses (the host, the queue, the blobs' memory, the counters) is in a
// Core the thread owns a share of: a context destroyed while its host is stuck in a
// backend call waits a bounded grace, then abandons the thread, which frees the Core
// when (if ever) it comes back.
class Context final {
    struct Core final : apir::HostMemory {
        Core(std::shared_ptr<Shared> sh) : shared(std::move(sh)) {}
        ~Core() {
            host.reset(); // the backend's deinit may still look at shared memory
            std::lock_guard lk(mu);
            resources.clear();
        }
        std::span<std::byte> resource(uint32_t res_id) noexcept override {
            std::lock_guard lk(mu);
            auto it = resources.find(res_id);
            if (it == resources.end()) return {};
            return {it->second->host.get().data(), it->second->host.get().size};
        }
        void serve() {
            std::unique_lock lk(q_mu);
            for (;;) {
                cv.wait(lk, [&] { return stopping || !items.empty(); });
                if (stopping) break;
                Item it = std::move(items.front());
                items.pop_front();
                busy = true;
                lk.unlock();
                if (it.detach != 0) {
                    std::lock_guard mk(mu);
                    resources.erase(it.detach);
                } else if (shared->host_alive.load(std::memory_order_acquire)) {
                    // The device's own copy of the guest's bytes, as the kernel's:
                    // the host decodes it in place. A rejected command gets no reply.
                    (void)host->execute_in_place(it.command);
                    shared->executed.fetch_add(1, std::memory_order_relaxed);
                }
                lk.lock();
                busy = false;
                if (items.empty()) idle_cv.notify_all();
            }
            exited = true;
            idle_cv.notify_all();
        }

        struct Item {
            std::vector<std::byte> command; // empty: a detach
            uint32_t detach = 0;
        };
        std::shared_ptr<Shared> shared;
        std::mutex mu; // resources
        std::map<uint32_t, std::shared_ptr<Memory>> resources;
        std::mutex q_mu; // items, busy, stopping, exited
        std::condition_variable cv, idle_cv;
        std::deque<Item> items;
        bool busy = false;
        bool stopping = false;
        bool exited = false; // serve() has returned
        std::optional<apir::Host> host;
    };

public:
    Context(apir::HostOptions options, std::function<bool(std::span<const std::byte>)> deliver,
            std::shared_ptr<Shared> shared, std::chrono::milliseconds grace, apir::Logger log)
        : deliver(std::move(deliver)), core_(std::make_shared<Core>(std::move(shared))),
          grace_(grace), log_(std::move(log)) {
        core_->host.emplace(std::move(options), *core_);
        thread_ = std::thread([core = core_] { core->serve(); });
    }
    ~Context() {
        std::unique_lock lk(core_->q_mu);
        core_->stopping = true;
        core_->cv.notify_all();
        const bool back = core_->idle_cv.wait_for(lk, grace_, [&] { return core_->exited; });
        lk.unlock();
        if (back) {
            thread_.join();
            return; // the Core goes with the last share (the host, then the memory)
        }
        // The host is stuck in a backend call: never wait for it. The thread keeps the
        // Core (host, backend, blob memory) alive and frees it if it ever returns.
        thread_.detach();
        log_.warn("simulated virtio-gpu device: a context's host thread did not come back "
                  "within {} ms (stuck in a backend call); it is abandoned, with its host and "
                  "memory, until it returns",
                  grace_.count());
    }
    Context(const Context&) = delete;
    Context& operator=(const Context&) = delete;

    /// SimConfig::deliver as it was when the context was created.
    const std::function<bool(std::span<const std::byte>)> deliver;

    void attach(uint32_t res_id, std::shared_ptr<Memory> mem) {
        std::lock_guard lk(core_->mu);
        core_->resources[res_id] = std::move(mem);
    }
    void execute(std::vector<std::byte> command) { push(Core::Item{std::move(command), 0}); }
    void detach(uint32_t res_id) { push(Core::Item{{}, res_id}); }
    void drain() {
        std::unique_lock lk(core_->q_mu);
        core_->idle_cv.wait(
            lk, [&] { return (core_->items.empty() && !core_->busy) || core_->stopping; });
    }

private:
    void push(Core::Item it) {
        {
            std::lock_guard lk(core_->q_mu);
            core_->items.push_back(std::move(it));
        }
        core_->cv.notify_one();
    }

    std::shared_ptr<Core> core_;
    std::chrono::milliseconds grace_;
    apir::Logger log_;
    std::thread thread_;
};

// A GEM object: alive while a handle or a mapping refers to it.
struct Object {
    uint32_t res_id = 0;
    uint64_t size = 0;
    bool host_visible = false; // counted in the host-visible region
    uint64_t offset = 0;       // fake mmap offset, 0 until MAP
    std::shared_ptr<Memory> mem;
    std::weak_ptr<Context> ctx;
    uint32_t handles = 0;
    uint32_t maps = 0;
};

struct File {
    int fd = -1;
    const SimNode* node = nullptr;
    bool virtio = false;
    // Context state: CONTEXT_INIT sets these one parameter at a time and does not undo
    // them when a later parameter fails.
    bool context_created = false;
    bool capset_set = false;
    uint32_t capset = 0;
    uint64_t num_rings = 0;
    uint64_t ring_mask = 0;
    std::map<uint32_t, std::shared_ptr<Object>> handles;
    std::shared_ptr<Context> ctx;

    uint32_t lowest_free_handle() const {
        uint32_t h = 1;
        for (const auto& [k, v] : handles) {
            if (k != h) break;
            ++h;
        }
        return h;
    }
};

struct Fault {
    int err = 0;
    unsigned after = 0;
    unsigned times = 0;
};

// Copies between the caller's memory and the device's, as the kernel's copy_from_user
// and copy_to_user do: memory the caller cannot read (or write) is EFAULT, never a
// fault in the device. process_vm_readv/writev on the process itself check the pages
// without touching them; where a sandbox refuses those calls (ENOSYS, EPERM), a pipe
// does the same check (write(2) from, read(2) into the caller's memory).
bool pipe_copy(void* dst, const void* src, size_t n) {
    int p[2];
    if (::pipe2(p, O_CLOEXEC) != 0) return false;
    apir::detail::PosixFd rd(p[0]), wr(p[1]);
    auto* d = static_cast<char*>(dst);
    const auto* s = static_cast<const char*>(src);
    while (n > 0) {
        const size_t chunk = std::min<size_t>(n, 4096); // within the pipe's capacity
        const ssize_t w = ::write(wr.get(), s, chunk);
        if (w <= 0) return false;
        for (ssize_t got = 0; got < w;) {
            const ssize_t r = ::read(rd.get(), d + got, size_t(w - got));
            if (r <= 0) return false;
            got += r;
        }
        d += w, s += w, n -= size_t(w);
    }
    return true;
}
enum class Copy { from_user, to_user };
// SimConfig::check_user_memory of the device whose ioctl this thread runs.
thread_local bool t_check_user_memory = false;
bool user_copy(Copy dir, void* local, uint64_t user, size_t n) {
    if (n == 0) return true;
    if (user == 0) return false;
    if (!t_check_user_memory) { // a trusted caller: the copy costs no system call
        if (dir == Copy::from_user)
            std::memcpy(local, reinterpret_cast<const void*>(user), n);
        else
            std::memcpy(reinterpret_cast<void*>(user), local, n);
        return true;
    }
    iovec l{local, n};
    iovec u{reinterpret_cast<void*>(user), n};
    const ssize_t r = dir == Copy::from_user ? ::process_vm_readv(::getpid(), &l, 1, &u, 1, 0)
                                             : ::process_vm_writev(::getpid(), &l, 1, &u, 1, 0);
    if (r == ssize_t(n)) return true;
    if (r >= 0 || (errno != ENOSYS && errno != EPERM)) return false; // EFAULT, or a part
    return dir == Copy::from_user ? pipe_copy(local, u.iov_base, n)
                                  : pipe_copy(u.iov_base, local, n);
}
bool from_user(void* dst, uint64_t user, size_t n) {
    return user_copy(Copy::from_user, dst, user, n);
}
bool to_user(uint64_t user, const void* src, size_t n) {
    return user_copy(Copy::to_user, const_cast<void*>(src), user, n);
}
uint64_t user_addr(const void* p) {
    return reinterpret_cast<uintptr_t>(p);
}

int copy_field(const std::string& value, char* buf, size_t& len) {
    // drm_copy_field: copy what fits, report the full length; a buffer it cannot write
    // is EFAULT.
    const size_t n = std::min(len, value.size());
    len = value.size();
    if (buf && n && !to_user(user_addr(buf), value.data(), n)) return -EFAULT;
    return 0;
}

} // namespace

std::vector<SimCapset> SimConfig::default_capsets() {
    SimCapset virgl2{2, 2, std::vector<std::byte>(8, std::byte{1})};
    // Venus capset data starts with its wire-format and XML versions (both non-zero).
    SimCapset venus{uint32_t(apir::capset_venus), 0, std::vector<std::byte>(64, std::byte{1})};
    return {virgl2, venus, apir_capset()};
}

SimCapset SimConfig::apir_capset(uint32_t supports_blob, size_t size) {
    uapi::apir_capset data{};
    data.apir_version = 1;
    data.supports_blob_resources = supports_blob;
    SimCapset c{apir::capset_apir, 0, std::vector<std::byte>(size)};
    std::memcpy(c.data.data(), &data, std::min(size, sizeof(data)));
    return c;
}

struct SimDevice::State {
    explicit State(SimConfig c) : cfg(std::move(c)) {}

    SimConfig cfg;
    mutable std::mutex mu;
    std::map<int, std::unique_ptr<File>> files;
    int next_fd = first_fd;
    std::map<uint32_t, std::shared_ptr<Object>> objects; // by resource id
    uint32_t next_res_id = first_res_id;
    uint64_t next_offset = first_mmap_offset;
    uint64_t visible_used = 0;
    struct Map {
        std::shared_ptr<Object> obj;
        size_t length;
        // The page ranges still mapped ([begin, end)): all of it until a program's
        // munmap takes part of it (munmap_range).
        std::vector<std::pair<uintptr_t, uintptr_t>> pieces;
    };
    std::map<void*, Map> maps;
    std::array<Fault, size_t(SimOp::count_)> faults{};
    std::array<uint64_t, size_t(SimOp::count_)> calls{};
    uint64_t fenced = 0;
    uint64_t bad_munmaps = 0;
    uint64_t contexts = 0;
    uint32_t last_capset = 0;
    std::atomic<uint64_t> dropped{0};
    std::shared_ptr<Shared> shared = std::make_shared<Shared>();
    std::vector<std::weak_ptr<Context>> all_contexts;

    // Counts the call; returns the injected error (negative) or 0.
    int injected(SimOp op) {
        ++calls[size_t(op)];
        Fault& f = faults[size_t(op)];
        if (f.times == 0) return 0;
        if (f.after > 0) {
            --f.after;
            return 0;
        }
        if (f.times != ~0u) --f.times;
        return -f.err;
    }

    File* file(int fd) {
        auto it = files.find(fd);
        return it == files.end() ? nullptr : it->second.get();
    }

    uint64_t capset_mask() const {
        uint64_t m = 0;
        for (const auto& c : cfg.capsets)
            if (c.id <= max_capset_id) m |= uint64_t{1} << c.id;
        return m;
    }

    // A context made by CONTEXT_INIT, or implicitly (capset 0) by a blob or execbuffer.
    void create_context(File& f) {
        f.context_created = true;
        ++contexts;
        last_capset = f.capset;
        if (f.capset != apir::capset_apir && f.capset != apir::capset_venus) return;
        apir::HostOptions o = cfg.host;
        o.command_type_offset = f.capset == apir::capset_venus ? apir::venus_command_offset : 0;
        f.ctx = std::make_shared<Context>(std::move(o), cfg.deliver, shared, cfg.stop_grace,
                                          cfg.logger);
        all_contexts.push_back(f.ctx);
    }

    // The DRM core's part of one ioctl, around its handler: copy the caller's struct in
    // (zero-extended to the kernel's size), count the call (or fail it as injected),
    // check the file, run the handler under the device lock, and copy the struct back
    // out, even when the ioctl failed. Only DRM_IOCTL_VERSION answers another driver's
    // file. The handler is called with the lock held and may release it (EXECBUFFER).
    template <class T, SimOp Op, auto Handler>
    int drm_ioctl(int fd, unsigned long request, void* arg) {
        T k{};
        const size_t n = std::min(size_t(_IOC_SIZE(request)), kernel_size<T>(cfg.kernel));
        if ((_IOC_DIR(request) & _IOC_WRITE) && n && !from_user(&k, user_addr(arg), n))
            return -EFAULT;
        std::unique_lock lk(mu);
        int r = injected(Op);
        File* f = r ? nullptr : file(fd);
        if (r == 0 && !f) r = -EBADF;
        if (r == 0 && !f->virtio && Op != SimOp::version) r = -EINVAL; // another driver's
        if (r == 0) {
            if constexpr (requires { (this->*Handler)(*f, k, lk); })
                r = (this->*Handler)(*f, k, lk);
            else
                r = (this->*Handler)(*f, k);
        }
        if (lk.owns_lock()) lk.unlock();
        if ((_IOC_DIR(request) & _IOC_READ) && n && !to_user(user_addr(arg), &k, n)) return -EFAULT;
        return r;
    }

    // One handler per ioctl (the table below maps request numbers to them), called by
    // drm_ioctl() with the caller's struct and file.
    int ioctl_version(File& f, uapi::version& v) {
        v.version_major = f.node->driver_major;
        v.version_minor = f.virtio ? 1 : 0;
        v.version_patchlevel = 0;
        int e = copy_field(f.node->driver, v.name, v.name_len);
        if (e == 0) e = copy_field("0", v.date, v.date_len);
        if (e == 0) e = copy_field(f.virtio ? "virtio GPU" : "another GPU", v.desc, v.desc_len);
        return e;
    }

    int ioctl_getparam(File&, uapi::getparam& p) {
        uint64_t v = 0;
        switch (static_cast<uapi::Param>(p.param)) {
        case uapi::Param::features_3d:
            v = cfg.has_3d;
            break;
        case uapi::Param::capset_query_fix:
            v = 1;
            break;
        case uapi::Param::resource_blob:
            v = cfg.has_blob;
            break;
        case uapi::Param::host_visible:
            v = cfg.host_visible_bytes != 0;
            break;
        case uapi::Param::cross_device:
            v = 0;
            break;
        case uapi::Param::context_init:
            v = cfg.has_context_init;
            break;
        case uapi::Param::supported_capset_ids:
            v = capset_mask();
            break;
        case uapi::Param::explicit_debug_name:
            if (cfg.kernel == SimKernel::linux_6_1) return -EINVAL;
            v = 1;
            break;
        default:
            return -EINVAL;
        }
        if (p.value == 0) return -EFAULT;
        // The kernel copies an int: 4 bytes, whatever the caller's variable.
        const auto v32 = static_cast<uint32_t>(v);
        return to_user(p.value, &v32, sizeof(v32)) ? 0 : -EFAULT;
    }

    int ioctl_get_caps(File&, uapi::get_caps& g) {
        if (cfg.capsets.empty()) return -ENOSYS;
        if (g.size == 0) return -EINVAL;
        auto c = std::find_if(cfg.capsets.begin(), cfg.capsets.end(), [&](const SimCapset& c) {
            return c.id == g.cap_set_id && c.max_version >= g.cap_set_ver;
        });
        if (c == cfg.capsets.end()) return -EINVAL;
        if (g.addr == 0) return -EFAULT;
        return to_user(g.addr, c->data.data(), std::min<size_t>(g.size, c->data.size())) ? 0
                                                                                         : -EFAULT;
    }

    int ioctl_context_init(File& f, uapi::context_init& ci) {
        if (!cfg.has_context_init || !cfg.has_3d) return -EINVAL;
        const uint32_t max_params = cfg.kernel == SimKernel::linux_6_1 ? 3 : 4;
        if (ci.num_params > max_params) return -EINVAL;
        if (ci.num_params && ci.ctx_set_params == 0) return -EFAULT;
        std::vector<uapi::context_set_param> params(ci.num_params);
        if (!from_user(params.data(), ci.ctx_set_params, params.size() * sizeof(params[0])))
            return -EFAULT;
        if (f.context_created) return -EEXIST;
        bool rings_seen = false;
        for (const auto& p : params) {
            switch (p.param) {
            case uapi::context_param_capset_id:
                if (p.value > max_capset_id) return -EINVAL;
                if ((capset_mask() >> p.value & 1) == 0) return -EINVAL;
                if (f.capset_set) return -EINVAL; // also after a failed attempt
                f.capset = static_cast<uint32_t>(p.value);
                f.capset_set = true;
                break;
            case uapi::context_param_num_rings:
                if (p.value > max_rings || rings_seen) return -EINVAL;
                rings_seen = true;
                f.num_rings = p.value;
                break;
            case uapi::context_param_poll_rings_mask:
                if (f.ring_mask != 0) return -EINVAL;
                f.ring_mask = p.value;
                break;
            case uapi::context_param_debug_name:
                if (cfg.kernel == SimKernel::linux_6_1) return -EINVAL;
                break;
            default:
                return -EINVAL;
            }
        }
        const uint64_t valid = f.num_rings >= 64 ? ~uint64_t{0} : (uint64_t{1} << f.num_rings) - 1;
        if (f.ring_mask & ~valid) return -EINVAL;
        create_context(f);
        return 0;
    }

    int ioctl_create_blob(File& f, uapi::resource_create_blob& b) {
        if (!cfg.has_blob) return -EINVAL;
        if (b.blob_flags & ~uapi::blob_flags_known) return -EINVAL;
        if (b.cmd_size % 4 != 0) return -EINVAL;
        bool host3d = false;
        switch (b.blob_mem) {
        case uapi::blob_mem_guest:
            break;
        case uapi::blob_mem_host3d:
        case uapi::blob_mem_host3d_guest:
            host3d = true;
            break;
        default:
            return -EINVAL;
        }
        if (host3d && !cfg.has_3d) return -EINVAL;
        if (!host3d && (b.blob_id != 0 || b.cmd_size != 0)) return -EINVAL;
        const bool visible =
            b.blob_mem == uapi::blob_mem_host3d && (b.blob_flags & uapi::blob_flag_use_mappable);
        if (visible && cfg.host_visible_bytes == 0) return -EINVAL;
        if (!f.context_created) create_context(f);
        const uint64_t size = page_align(b.size);
        if (size == 0) return -ENOSPC;
        if (visible && visible_used + size > cfg.host_visible_bytes) return -ENOSPC;

        auto mem = std::make_shared<Memory>();
        mem->fd.reset(memfd_create("apir-sim-blob", MFD_CLOEXEC));
        if (!mem->fd || ftruncate(mem->fd.get(), static_cast<off_t>(size)) != 0) return -ENOMEM;
        void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, mem->fd.get(), 0);
        if (p == MAP_FAILED) return -ENOMEM;
        mem->host.reset({p, size});

        auto obj = std::make_shared<Object>();
        obj->res_id = next_res_id++;
        obj->size = size;
        obj->host_visible = visible;
        obj->mem = mem;
        obj->handles = 1;
        if (host3d && f.ctx) {
            obj->ctx = f.ctx;
            f.ctx->attach(obj->res_id, mem);
        }
        if (visible) visible_used += size;
        const uint32_t handle = f.lowest_free_handle();
        f.handles.emplace(handle, obj);
        objects.emplace(obj->res_id, obj);
        b.bo_handle = handle;
        b.res_handle = obj->res_id;
        return 0;
    }

    int ioctl_map(File& f, uapi::map& m) {
        auto it = f.handles.find(m.handle);
        if (it == f.handles.end()) return -ENOENT;
        Object& o = *it->second;
        if (o.offset == 0) {
            o.offset = next_offset;
            next_offset += o.size;
        }
        m.offset = o.offset;
        return 0;
    }

    int ioctl_gem_close(File& f, uapi::gem_close& g) {
        auto it = f.handles.find(g.handle);
        if (g.handle == 0 || it == f.handles.end()) return -EINVAL;
        auto obj = std::move(it->second);
        f.handles.erase(it);
        --obj->handles;
        maybe_free(obj);
        return 0;
    }

    int ioctl_execbuffer(File& f, KernelExecbuffer& e, std::unique_lock<std::mutex>& lk) {
        constexpr uint32_t known =
            uapi::execbuf_fence_fd_in | uapi::execbuf_fence_fd_out | uapi::execbuf_ring_idx;
        if (!cfg.has_3d) return -ENOSYS;
        if (e.flags & ~known) return -EINVAL;
        uint32_t ring = 0;
        if (e.flags & uapi::execbuf_ring_idx) {
            if (e.ring_idx >= f.num_rings) return -EINVAL;
            ring = e.ring_idx;
        }
        if (e.size > INT_MAX) return -ENOMEM;
        // No fences in the simulation: an in-fence or in-syncobj is refused.
        if ((e.flags & uapi::execbuf_fence_fd_in) || e.num_in_syncobjs) return -EINVAL;
        std::vector<uint32_t> bos(e.num_bo_handles);
        if (!bos.empty()) {
            if (e.bo_handles == 0) return -EFAULT;
            if (!from_user(bos.data(), e.bo_handles, bos.size() * sizeof(uint32_t))) return -EFAULT;
        }
        for (size_t i = 0; i < bos.size(); ++i) {
            if (!f.handles.count(bos[i])) return -ENOENT;
            if (std::find(bos.begin(), bos.begin() + long(i), bos[i]) != bos.begin() + long(i))
                return -EALREADY;
        }
        if (!f.context_created) create_context(f);
        if ((e.flags & uapi::execbuf_fence_fd_out) || e.num_out_syncobjs || !bos.empty() ||
            (f.ring_mask >> ring & 1)) {
            ++fenced;
            if (e.flags & uapi::execbuf_fence_fd_out) e.fence_fd = -1;
        }
        if (e.size && e.command == 0) return -EFAULT;
        std::vector<std::byte> command(e.size); // the kernel's copy
        if (!from_user(command.data(), e.command, command.size())) return -EFAULT;
        std::shared_ptr<Context> ctx = f.ctx;
        lk.unlock(); // the host and the deliver hook run without the device lock
        if (!ctx || (ctx->deliver && !ctx->deliver(command)))
            dropped.fetch_add(1, std::memory_order_relaxed);
        else
            ctx->execute(std::move(command));
        return 0;
    }

    // Frees an object nothing refers to any more; its host memory goes when the host
    // has processed everything sent before.
    void maybe_free(const std::shared_ptr<Object>& obj) {
        if (obj->handles != 0 || obj->maps != 0) return;
        objects.erase(obj->res_id);
        if (obj->host_visible) visible_used -= obj->size;
        if (auto c = obj->ctx.lock()) c->detach(obj->res_id);
    }
};

SimDevice::SimDevice(SimConfig config) : s_(std::make_unique<State>(std::move(config))) {}

SimDevice::~SimDevice() {
    // Whatever a test leaked goes now; hosts stop before their memory.
    std::vector<std::shared_ptr<Context>> ctxs;
    {
        std::lock_guard lk(s_->mu);
        for (auto& [addr, m] : s_->maps)
            for (auto [b, e] : m.pieces)
                ::munmap(reinterpret_cast<void*>(b), e - b);
        s_->maps.clear();
        for (auto& [fd, f] : s_->files)
            if (f->ctx) ctxs.push_back(std::move(f->ctx));
        s_->files.clear();
        s_->objects.clear();
    }
    ctxs.clear();
}

int SimDevice::render_nodes(std::vector<apir::DrmNode>& nodes) {
    std::lock_guard lk(s_->mu);
    if (int e = s_->injected(SimOp::enumerate)) return e;
    for (const auto& n : s_->cfg.nodes)
        nodes.push_back({n.path, n.bus});
    return 0;
}

int SimDevice::open(const std::string& path) {
    std::lock_guard lk(s_->mu);
    if (int e = s_->injected(SimOp::open)) return e;
    auto it = std::find_if(s_->cfg.nodes.begin(), s_->cfg.nodes.end(),
                           [&](const SimNode& n) { return n.path == path; });
    if (it == s_->cfg.nodes.end()) return -ENOENT;
    if (it->open_errno) return -it->open_errno;
    auto f = std::make_unique<File>();
    f->fd = s_->next_fd++;
    f->node = &*it;
    f->virtio = it->driver == "virtio_gpu";
    const int fd = f->fd;
    s_->files.emplace(fd, std::move(f));
    return fd;
}

int SimDevice::close(int fd) {
    std::shared_ptr<Context> ctx; // destroyed (host thread joined) outside the lock
    int result = 0;
    {
        std::lock_guard lk(s_->mu);
        // Like close(2), the descriptor is gone even when an error is reported.
        result = s_->injected(SimOp::close);
        auto it = s_->files.find(fd);
        if (it == s_->files.end()) return -EBADF;
        std::unique_ptr<File> f = std::move(it->second);
        s_->files.erase(it);
        for (auto& [h, obj] : f->handles) {
            --obj->handles;
            s_->maybe_free(obj);
        }
        ctx = std::move(f->ctx);
    }
    return result;
}

namespace {

// The ioctls the device answers, by number (_IOC_NR: a request's size, and so its full
// number, varies with the caller's headers), each with its struct and handler.
struct IoctlEntry {
    unsigned nr;
    int (SimDevice::State::*call)(int fd, unsigned long request, void* arg);
};
using S = SimDevice::State;
const IoctlEntry ioctl_table[] = {
    {_IOC_NR(uapi::ioctl_version), &S::drm_ioctl<uapi::version, SimOp::version, &S::ioctl_version>},
    {_IOC_NR(uapi::ioctl_gem_close),
     &S::drm_ioctl<uapi::gem_close, SimOp::gem_close, &S::ioctl_gem_close>},
    {_IOC_NR(uapi::ioctl_map), &S::drm_ioctl<uapi::map, SimOp::map, &S::ioctl_map>},
    {_IOC_NR(uapi::ioctl_execbuffer),
     &S::drm_ioctl<KernelExecbuffer, SimOp::execbuffer, &S::ioctl_execbuffer>},
    {_IOC_NR(uapi::ioctl_getparam),
     &S::drm_ioctl<uapi::getparam, SimOp::getparam, &S::ioctl_getparam>},
    {_IOC_NR(uapi::ioctl_get_caps),
     &S::drm_ioctl<uapi::get_caps, SimOp::get_caps, &S::ioctl_get_caps>},
    {_IOC_NR(uapi::ioctl_resource_create_blob),
     &S::drm_ioctl<uapi::resource_create_blob, SimOp::create_blob, &S::ioctl_create_blob>},
    {_IOC_NR(uapi::ioctl_context_init),
     &S::drm_ioctl<uapi::context_init, SimOp::context_init, &S::ioctl_context_init>},
};

} // namespace

int SimDevice::ioctl(int fd, unsigned long request, void* arg) {
    // The DRM core: another subsystem's request is ENOTTY, an unknown DRM one EINVAL.
    if (_IOC_TYPE(request) != DRM_IOCTL_BASE) return -ENOTTY;
    const unsigned nr = _IOC_NR(request);
    const auto* e = std::find_if(std::begin(ioctl_table), std::end(ioctl_table),
                                 [&](const IoctlEntry& x) { return x.nr == nr; });
    if (e == std::end(ioctl_table)) return -EINVAL;
    t_check_user_memory = s_->cfg.check_user_memory;
    return (s_.get()->*e->call)(fd, request, arg);
}

int SimDevice::mmap(int fd, uint64_t offset, size_t length, void** addr) {
    std::lock_guard lk(s_->mu);
    if (int e = s_->injected(SimOp::mmap)) return e;
    File* f = s_->file(fd);
    if (!f) return -EBADF;
    std::shared_ptr<Object> obj;
    for (const auto& [id, o] : s_->objects)
        if (o->offset != 0 && o->offset == offset) obj = o;
    if (!obj) return -EINVAL; // not exactly an object's offset
    // The file must hold a handle to the object (DRM's per-file offset permission).
    bool allowed = false;
    for (const auto& [h, o] : f->handles)
        allowed = allowed || o == obj;
    if (!allowed) return -EACCES;
    if (length == 0 || length > obj->size) return -EINVAL;
    void* p = ::mmap(nullptr, length, PROT_READ | PROT_WRITE, MAP_SHARED, obj->mem->fd.get(), 0);
    if (p == MAP_FAILED) return -errno;
    ++obj->maps;
    const auto b = reinterpret_cast<uintptr_t>(p);
    s_->maps.emplace(p, State::Map{obj, length, {{b, b + page_align(length)}}});
    *addr = p;
    return 0;
}

int SimDevice::munmap(void* addr, size_t length) {
    std::lock_guard lk(s_->mu);
    if (int e = s_->injected(SimOp::munmap)) return e;
    auto it = s_->maps.find(addr);
    const auto b = reinterpret_cast<uintptr_t>(addr);
    if (it == s_->maps.end() || it->second.length != length || it->second.pieces.size() != 1 ||
        it->second.pieces.front() != std::pair(b, b + page_align(length))) {
        ++s_->bad_munmaps;
        return -EINVAL;
    }
    ::munmap(addr, length);
    auto obj = std::move(it->second.obj);
    s_->maps.erase(it);
    --obj->maps;
    s_->maybe_free(obj);
    return 0;
}

int SimDevice::munmap_range(void* addr, size_t length, size_t* released) {
    if (released) *released = 0;
    const auto b = reinterpret_cast<uintptr_t>(addr);
    if ((b & (page_size - 1)) != 0 || length == 0 || length > UINTPTR_MAX - b - page_size)
        return -EINVAL;
    const uintptr_t e = b + page_align(length);
    std::lock_guard lk(s_->mu);
    auto overlaps = [&](const State::Map& m) {
        for (auto [pb, pe] : m.pieces)
            if (pb < e && b < pe) return true;
        return false;
    };
    bool any = false;
    for (const auto& [start, m] : s_->maps)
        any = any || overlaps(m);
    if (!any) return -ENOENT;
    if (int err = s_->injected(SimOp::munmap)) return err;
    // Under the lock, so that no mapping of the device is made in the range meanwhile.
    ::munmap(addr, e - b);
    for (auto it = s_->maps.begin(); it != s_->maps.end();) {
        auto& pieces = it->second.pieces;
        std::vector<std::pair<uintptr_t, uintptr_t>> left;
        for (auto [pb, pe] : pieces) {
            if (pe <= b || e <= pb) {
                left.emplace_back(pb, pe);
                continue;
            }
            if (pb < b) left.emplace_back(pb, b);
            if (e < pe) left.emplace_back(e, pe);
        }
        pieces = std::move(left);
        if (!pieces.empty()) {
            ++it;
            continue;
        }
        auto obj = std::move(it->second.obj);
        it = s_->maps.erase(it);
        --obj->maps;
        s_->maybe_free(obj);
        if (released) ++*released;
    }
    return 0;
}

void SimDevice::close_all() {
    std::vector<int> fds;
    {
        std::lock_guard lk(s_->mu);
        for (const auto& [fd, f] : s_->files)
            fds.push_back(fd);
    }
    for (int fd : fds)
        (void)close(fd);
}

const std::atomic<bool>* SimDevice::host_alive() const noexcept {
    return &s_->shared->host_alive;
}

void SimDevice::fail(SimOp op, int err, unsigned after, unsigned times) {
    std::lock_guard lk(s_->mu);
    s_->faults[size_t(op)] = Fault{err, after, times};
}

void SimDevice::set_host(apir::HostOptions host,
                         std::function<bool(std::span<const std::byte>)> deliver) {
    std::lock_guard lk(s_->mu);
    s_->cfg.host = std::move(host);
    s_->cfg.deliver = std::move(deliver);
}

void SimDevice::clear_faults() {
    std::lock_guard lk(s_->mu);
    s_->faults = {};
}

void SimDevice::stop_host() {
    s_->shared->host_alive.store(false, std::memory_order_release);
}

size_t SimDevice::open_files() const {
    std::lock_guard lk(s_->mu);
    return s_->files.size();
}
size_t SimDevice::gem_handles() const {
    std::lock_guard lk(s_->mu);
    size_t n = 0;
    for (const auto& [fd, f] : s_->files)
        n += f->handles.size();
    return n;
}
size_t SimDevice::mappings() const {
    std::lock_guard lk(s_->mu);
    return s_->maps.size();
}
size_t SimDevice::objects() const {
    std::lock_guard lk(s_->mu);
    return s_->objects.size();
}
uint64_t SimDevice::host_visible_used() const {
    std::lock_guard lk(s_->mu);
    return s_->visible_used;
}
uint64_t SimDevice::calls(SimOp op) const {
    std::lock_guard lk(s_->mu);
    return s_->calls[size_t(op)];
}
uint64_t SimDevice::fenced_submits() const {
    std::lock_guard lk(s_->mu);
    return s_->fenced;
}
uint64_t SimDevice::dropped_commands() const {
    return s_->dropped.load();
}
uint64_t SimDevice::executed_commands() const {
    return s_->shared->executed.load();
}
uint64_t SimDevice::bad_munmaps() const {
    std::lock_guard lk(s_->mu);
    return s_->bad_munmaps;
}
uint64_t SimDevice::contexts_created() const {
    std::lock_guard lk(s_->mu);
    return s_->contexts;
}
uint32_t SimDevice::last_context_capset() const {
    std::lock_guard lk(s_->mu);
    return s_->last_capset;
}

void SimDevice::drain() {
    std::vector<std::shared_ptr<Context>> ctxs;
    {
        std::lock_guard lk(s_->mu);
        for (auto& w : s_->all_contexts)
            if (auto c = w.lock()) ctxs.push_back(std::move(c));
    }
    for (auto& c : ctxs)
        c->drain();
}

} // namespace apir
