// libapir-vdrm.so: one virtual virtio-gpu render node for an unmodified program
// (LD_PRELOAD). See include/apir/vdrm.h and docs/VDRM.md.
//
// The node is apir::SimDevice. What a program reaches through libdrm and the C library
// to find it is a small sysfs and /dev/dri tree in a private temporary directory, made
// at the first look at /dev/dri or /sys/.../226:N and removed at exit; the paths the
// kernel would serve (/dev/dri, /sys/dev/char/226:N, /sys/class/drm/renderDN) are
// redirected there, and the node itself is a memfd whose descriptor stat()s as the
// character device 226:N. ioctl, mmap, munmap and close of such a descriptor go to the
// simulated device; every other path and descriptor goes to the next definition
// (dlsym RTLD_NEXT), untouched.
// Each function is defined under its own name: no 64-bit renaming, no fortified wrappers.
#undef _FORTIFY_SOURCE
#undef _FILE_OFFSET_BITS

#include "vdrm_config.hpp"

#include "apir/internal/unique_handle.hpp"

#include "apir/sim_device.hpp"
#include "apir/vdrm.h"

#include <atomic>
#include <cerrno>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <dirent.h>
#include <dlfcn.h>
#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#define APIR_VDRM_EXPORT extern "C" __attribute__((visibility("default")))

namespace {

// --- The next definitions (the C library's).

template <class F>
F next(const char* name) noexcept {
    return reinterpret_cast<F>(dlsym(RTLD_NEXT, name));
}
#define APIR_NEXT(fn)                                                                              \
    ([]() noexcept {                                                                               \
        static const auto f = next<decltype(&::fn)>(#fn);                                          \
        return f;                                                                                  \
    }())

constexpr int max_fd = 1 << 16;
// Descriptor -> the simulated device's file + 1 (0: not a virtual node).
std::atomic<int> g_fd_sim[max_fd];
std::atomic<int> g_open_nodes{0};
std::atomic<int> g_mappings{0};

struct Vdrm {
    apir::vdrm::Settings settings;
    std::string root;              // the private tree
    std::string node_path;         // /dev/dri/renderDN
    std::string sys_char;          // /sys/dev/char/226:N
    std::string sys_class;         // /sys/class/drm/renderDN
    std::vector<std::string> made; // what to remove at exit, in creation order
    std::shared_ptr<apir::SimDevice> dev;
    std::mutex refs_mu;
    std::map<int, int> refs; // descriptors (dup) per file of the device
    struct timespec born {};
};

// 0 not yet, 1 initializing, 2 ready, 3 disabled or exit has begun, 4 a child of fork():
// the device and its host threads are the parent's, and the node is gone.
enum : int { st_none, st_init, st_ready, st_gone, st_forked };
std::atomic<int> g_state{st_none};
// Never freed once made: a thread may still be inside a call when exit begins.
Vdrm* g_vdrm = nullptr;
pid_t g_owner = 0; // the process that made the node
std::mutex g_init_mu;
thread_local bool t_inside = false; // in our own initialization: pass everything through
// In a call into the device: its own munmap calls (a blob's memory freed, a range
// unmapped under its lock) come back to munmap() below and must pass through, or they
// would wait for the lock the device holds.
thread_local bool t_in_device = false;
struct InDevice {
    bool was = t_in_device;
    InDevice() noexcept { t_in_device = true; }
    ~InDevice() { t_in_device = was; }
    InDevice(const InDevice&) = delete;
    InDevice& operator=(const InDevice&) = delete;
};

void say(const std::string& line) noexcept {
    std::string l = "apir-vdrm: " + line + "\n";
    (void)!::write(2, l.data(), l.size());
}

// --- The private tree.

bool write_file(Vdrm& v, const std::string& rel, const std::string& text) {
    const std::string p = v.root + rel;
    apir::detail::PosixFd fd(
        APIR_NEXT(open)(p.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0444));
    if (!fd) return false;
    const bool ok = ::write(fd.get(), text.data(), text.size()) == ssize_t(text.size());
    fd.reset();
    v.made.push_back(p);
    return ok;
}
bool make_dir(Vdrm& v, const std::string& rel) {
    const std::string p = v.root + rel;
    if (::mkdir(p.c_str(), 0755) != 0) return false;
    v.made.push_back(p);
    return true;
}
bool make_link(Vdrm& v, const std::string& rel, const std::string& target) {
    const std::string p = v.root + rel;
    if (::symlink(target.c_str(), p.c_str()) != 0) return false;
    v.made.push_back(p);
    return true;
}

bool build_tree(Vdrm& v) {
    const auto& d = v.settings.device;
    const std::string minor = std::to_string(d.minor);
    const std::string name = "renderD" + minor;
    const std::string pci = "/sys/devices/pci0000:00/" + d.pci_slot;
    const std::string virtio = pci + "/virtio0";
    const std::string minor_dir = virtio + "/drm/" + name;
    bool ok = true;
    for (const char* dir :
         {"/dev", "/dev/dri", "/sys", "/sys/bus", "/sys/bus/pci", "/sys/bus/virtio", "/sys/class",
          "/sys/class/drm", "/sys/dev", "/sys/dev/char", "/sys/devices", "/sys/devices/pci0000:00"})
        ok = ok && make_dir(v, dir);
    ok = ok && make_dir(v, pci) && make_dir(v, virtio) && make_dir(v, virtio + "/drm") &&
         make_dir(v, minor_dir);
    // The PCI function of a virtio-gpu device (1af4:1050), as Linux's sysfs shows it.
    ok = ok && make_link(v, pci + "/subsystem", "../../../bus/pci") &&
         write_file(v, pci + "/uevent",
                    "DRIVER=virtio-pci\nPCI_CLASS=30000\nPCI_ID=1AF4:1050\n"
                    "PCI_SUBSYS_ID=1AF4:1100\nPCI_SLOT_NAME=" +
                        d.pci_slot +
                        "\nMODALIAS=pci:v00001AF4d00001050sv00001AF4sd00001100bc03sc00i00\n") &&
         write_file(v, pci + "/vendor", "0x1af4\n") && write_file(v, pci + "/device", "0x1050\n") &&
         write_file(v, pci + "/subsystem_vendor", "0x1af4\n") &&
         write_file(v, pci + "/subsystem_device", "0x1100\n") &&
         write_file(v, pci + "/revision", "0x01\n") && write_file(v, pci + "/class", "0x030000\n");
    std::string config(64, '\0');
    const unsigned char cfg[] = {0xf4, 0x1a, 0x50, 0x10};
    std::memcpy(config.data(), cfg, sizeof cfg);
    config[8] = 1;                              // revision
    config[11] = 3;                             // display controller
    config[44] = char(0xf4), config[45] = 0x1a; // subsystem vendor
    config[46] = 0x00, config[47] = 0x11;       // subsystem device
    ok = ok && write_file(v, pci + "/config", config);
    // The virtio device and its DRM minor.
    ok =
        ok && make_link(v, virtio + "/subsystem", "../../../../bus/virtio") &&
        write_file(v, virtio + "/uevent",
                   "DRIVER=virtio_gpu\nMODALIAS=virtio:d00000010v00001AF4\n") &&
        make_link(v, minor_dir + "/subsystem", "../../../../../../class/drm") &&
        make_link(v, minor_dir + "/device", "../../../virtio0") &&
        write_file(v, minor_dir + "/dev", "226:" + minor + "\n") &&
        write_file(v, minor_dir + "/uevent",
                   "MAJOR=226\nMINOR=" + minor + "\nDEVNAME=dri/" + name + "\nDEVTYPE=drm_minor\n");
    ok = ok &&
         make_link(v, "/sys/dev/char/226:" + minor,
                   "../../devices/pci0000:00/" + d.pci_slot + "/virtio0/drm/" + name) &&
         make_link(v, "/sys/class/drm/" + name,
                   "../../devices/pci0000:00/" + d.pci_slot + "/virtio0/drm/" + name);
    // /dev/dri lists the machine's own entries beside the virtual node; only the names
    // are here (their paths are not redirected: they reach the real nodes).
    ok = ok && write_file(v, "/dev/dri/" + name, "");
    if (DIR* real = APIR_NEXT(opendir)("/dev/dri")) {
        while (const dirent* e = ::readdir(real)) {
            const std::string n = e->d_name;
            if (n == "." || n == ".." || n == name) continue;
            ok = ok && write_file(v, "/dev/dri/" + n, "");
        }
        ::closedir(real);
    }
    return ok;
}

void remove_tree(Vdrm& v) {
    for (auto it = v.made.rbegin(); it != v.made.rend(); ++it)
        if (::unlink(it->c_str()) != 0) ::rmdir(it->c_str());
    ::rmdir(v.root.c_str());
    v.made.clear();
}

// Trees of processes that died without their exit handlers (a crash, a kill), and
// trees of this very process (made before an exec, which runs no exit handler): the
// tree is named after its process, and the next node to start removes the orphans.
void remove_orphans(const std::string& dir) noexcept {
    DIR* d = APIR_NEXT(opendir)(dir.c_str());
    if (!d) return;
    std::vector<std::string> gone;
    while (const dirent* e = ::readdir(d)) {
        int pid = 0;
        if (std::sscanf(e->d_name, "apir-vdrm-%d-", &pid) != 1 || pid <= 0) continue;
        if (pid == ::getpid() || (::kill(pid, 0) != 0 && errno == ESRCH))
            gone.push_back(dir + "/" + e->d_name);
    }
    ::closedir(d);
    for (const auto& g : gone)
        ::nftw(
            g.c_str(),
            [](const char* p, const struct stat*, int, struct FTW*) {
                return ::remove(p) == 0 ? 0 : 0;
            },
            16, FTW_DEPTH | FTW_PHYS);
}

// The exit handler. Other threads may still be inside a call, and the program's
// mappings stay in use until the process ends, so nothing is freed: the files the
// program left open are closed (their hosts stop, backends unload; a host stuck in a
// backend call is abandoned after SimConfig::stop_grace), later calls on the node's
// descriptors get EBADF, and the private tree is removed. In a child of fork() (which
// inherits the handler) nothing happens: the device, its threads and the tree are the
// parent's.
void teardown() noexcept {
    if (g_state.load() != st_ready || ::getpid() != g_owner) return;
    std::lock_guard lk(g_init_mu);
    if (g_state.load() != st_ready) return;
    g_state.store(st_gone);
    InDevice in;
    g_vdrm->dev->close_all();
    remove_tree(*g_vdrm);
}

// In the child of fork(): the node is gone. Its descriptors stay open (as memfds) but
// every call on them fails with ENODEV, and close() only closes them; nothing of the
// device (whose locks another thread of the parent may have held) is touched.
void on_fork_child() noexcept {
    const int s = g_state.load();
    if (s == st_ready) g_state.store(st_forked);
    if (s == st_init) g_state.store(st_gone); // the parent was initializing: not here
}

[[gnu::constructor]] void register_fork_handler() noexcept {
    (void)::pthread_atfork(nullptr, nullptr, on_fork_child);
}

// Sets the virtual node up on first use; false when it is disabled.
bool ready() noexcept {
    const int s = g_state.load(std::memory_order_acquire);
    if (s == st_ready) return true;
    if (s == st_gone || s == st_forked || t_inside) return false;
    std::lock_guard lk(g_init_mu);
    if (g_state.load() != st_none) return g_state.load() == st_ready;
    g_state.store(st_init);
    t_inside = true;
    auto v = std::make_unique<Vdrm>();
    std::string why;
    bool ok = apir::vdrm::read_settings(v->settings, why);
    if (ok) {
        auto& d = v->settings.device;
        if (d.minor < 0) { // the first render minor the machine does not use
            d.minor = 128;
            struct stat st;
            while (d.minor < 255 &&
                   APIR_NEXT(stat)(("/dev/dri/renderD" + std::to_string(d.minor)).c_str(), &st) ==
                       0)
                ++d.minor;
        }
        const char* tmp = std::getenv("TMPDIR");
        const std::string dir = tmp && *tmp ? tmp : "/tmp";
        remove_orphans(dir);
        std::string templ = dir + "/apir-vdrm-" + std::to_string(::getpid()) + "-XXXXXX";
        if (!::mkdtemp(templ.data())) {
            why = "cannot make its private directory in " +
                  std::string(tmp && *tmp ? tmp : "/tmp") + ": " + std::strerror(errno);
            ok = false;
        } else {
            v->root = templ;
            if (!build_tree(*v)) {
                why = "cannot build its sysfs tree in " + v->root + ": " + std::strerror(errno);
                remove_tree(*v);
                ok = false;
            }
        }
    }
    if (ok) {
        const std::string minor = std::to_string(v->settings.device.minor);
        v->node_path = "/dev/dri/renderD" + minor;
        v->sys_char = "/sys/dev/char/226:" + minor;
        v->sys_class = "/sys/class/drm/renderD" + minor;
        apir::SimConfig c = v->settings.sim;
        c.nodes.front().path = v->node_path;
        c.check_user_memory = true; // any program's pointers: EFAULT, never a fault here
        c.logger = apir::Logger([](apir::LogLevel, std::string_view m) { say(std::string(m)); },
                                apir::LogLevel::warn);
        v->dev = std::make_shared<apir::SimDevice>(std::move(c));
        for (const auto& f : v->settings.faults)
            v->dev->fail(f.op, f.err, f.after, f.times);
        ::clock_gettime(CLOCK_REALTIME, &v->born);
        g_vdrm = v.release();
        g_owner = ::getpid();
        std::atexit(teardown);
        g_state.store(st_ready, std::memory_order_release);
    } else {
        say(why + "; the virtual node is disabled");
        g_state.store(st_gone, std::memory_order_release);
    }
    t_inside = false;
    return ok;
}

// Whether path may concern the virtual node (cheap; no initialization).
bool may_concern(const char* path) noexcept {
    return path && path[0] == '/' &&
           (std::strncmp(path, "/dev/dri", 8) == 0 ||
            std::strncmp(path, "/sys/dev/char/", 14) == 0 ||
            std::strncmp(path, "/sys/class/drm", 14) == 0);
}

bool under(const char* path, const std::string& prefix) noexcept {
    const size_t n = prefix.size();
    return std::strncmp(path, prefix.c_str(), n) == 0 && (path[n] == '\0' || path[n] == '/');
}

bool is_node(const char* path) noexcept {
    return may_concern(path) && ready() && g_vdrm->node_path == path;
}

// The path to use instead of path: the private tree's, or path itself.
const char* redirect(const char* path, std::string& buf) noexcept {
    if (!may_concern(path) || !ready()) return path;
    const Vdrm& v = *g_vdrm;
    if (std::strcmp(path, "/dev/dri") == 0 || std::strcmp(path, "/dev/dri/") == 0 ||
        under(path, v.sys_char) || under(path, v.sys_class)) {
        buf = v.root + path;
        return buf.c_str();
    }
    return path;
}

int sim_file(int fd) noexcept {
    if (fd < 0 || fd >= max_fd || g_open_nodes.load(std::memory_order_relaxed) == 0) return -1;
    return g_fd_sim[fd].load(std::memory_order_acquire) - 1;
}

void node_stat(struct stat* st) noexcept {
    std::memset(st, 0, sizeof *st);
    const int minor = g_vdrm->settings.device.minor;
    st->st_dev = makedev(0, 5);
    st->st_ino = 0x4000 + unsigned(minor);
    st->st_mode = S_IFCHR | 0666;
    st->st_nlink = 1;
    st->st_rdev = makedev(226, unsigned(minor));
    st->st_blksize = 4096;
    st->st_atim = st->st_mtim = st->st_ctim = g_vdrm->born;
}

int fail_with(int err) noexcept {
    errno = err;
    return -1;
}

int open_node(int flags) noexcept {
    if ((flags & O_DIRECTORY) != 0) return fail_with(ENOTDIR);
    if ((flags & (O_CREAT | O_EXCL)) == (O_CREAT | O_EXCL)) return fail_with(EEXIST);
    apir::detail::PosixFd memfd(::memfd_create(("apir-vdrm:" + g_vdrm->node_path).c_str(),
                                               (flags & O_CLOEXEC) ? MFD_CLOEXEC : 0));
    if (!memfd) return -1;
    // Closed before errno is set, so that close cannot overwrite it.
    if (memfd.get() >= max_fd) {
        memfd.reset();
        return fail_with(EMFILE);
    }
    int s = 0;
    {
        InDevice in;
        s = g_vdrm->dev->open(g_vdrm->node_path);
    }
    if (s < 0) {
        memfd.reset();
        return fail_with(-s);
    }
    const int fd = memfd.release(); // the program's descriptor of the node from now on
    {
        std::lock_guard lk(g_vdrm->refs_mu);
        g_vdrm->refs[s] = 1;
    }
    g_fd_sim[fd].store(s + 1, std::memory_order_release);
    g_open_nodes.fetch_add(1);
    return fd;
}

// fd stops being a descriptor of the node; the device's file is closed with its last
// descriptor (what close(2) does to a DRM file shared by dup). 0, or a negative errno.
int release_fd(int fd) noexcept {
    const int s = g_fd_sim[fd].exchange(0) - 1;
    if (s < 0) return 0;
    g_open_nodes.fetch_sub(1);
    // After fork (the device is the parent's) or once exit has begun (its files are
    // closed), the descriptor just goes.
    if (g_state.load() != st_ready) return 0;
    {
        std::lock_guard lk(g_vdrm->refs_mu);
        auto it = g_vdrm->refs.find(s);
        if (it != g_vdrm->refs.end() && --it->second > 0) return 0;
        if (it != g_vdrm->refs.end()) g_vdrm->refs.erase(it);
    }
    InDevice in;
    return g_vdrm->dev->close(s); // like close(2): the descriptor goes even on an error
}

// newfd (a fresh descriptor from dup, dup2, dup3 or F_DUPFD of a node descriptor, s its
// file) is the node too.
int adopt_fd(int newfd, int s) noexcept {
    if (newfd < 0) return newfd;
    if (newfd >= max_fd) { // beyond the table: not the node
        ::close(newfd);
        return fail_with(EMFILE);
    }
    if (g_state.load() == st_ready) {
        std::lock_guard lk(g_vdrm->refs_mu);
        ++g_vdrm->refs[s];
    }
    g_fd_sim[newfd].store(s + 1, std::memory_order_release);
    g_open_nodes.fetch_add(1);
    return newfd;
}

template <class Real>
int open_any(Real real, const char* path, int flags, mode_t mode) noexcept {
    if (is_node(path)) return open_node(flags);
    std::string buf;
    return real(redirect(path, buf), flags, mode);
}

mode_t mode_arg(int flags, va_list ap) {
    return (flags & O_CREAT) || (flags & O_TMPFILE) == O_TMPFILE ? mode_t(va_arg(ap, int)) : 0;
}

} // namespace

// --- open

APIR_VDRM_EXPORT int open(const char* path, int flags, ...) {
    va_list ap;
    va_start(ap, flags);
    const mode_t mode = mode_arg(flags, ap);
    va_end(ap);
    return open_any(APIR_NEXT(open), path, flags, mode);
}
APIR_VDRM_EXPORT int open64(const char* path, int flags, ...) {
    va_list ap;
    va_start(ap, flags);
    const mode_t mode = mode_arg(flags, ap);
    va_end(ap);
    return open_any(APIR_NEXT(open64), path, flags, mode);
}
APIR_VDRM_EXPORT int __open_2(const char* path, int flags) {
    return open_any(APIR_NEXT(open), path, flags, 0);
}
APIR_VDRM_EXPORT int __open64_2(const char* path, int flags) {
    return open_any(APIR_NEXT(open64), path, flags, 0);
}
namespace {
template <class Real>
int openat_any(Real real, int dirfd, const char* path, int flags, mode_t mode) noexcept {
    if (is_node(path)) return open_node(flags);
    std::string buf;
    return real(dirfd, redirect(path, buf), flags, mode);
}
} // namespace

APIR_VDRM_EXPORT int openat(int dirfd, const char* path, int flags, ...) {
    va_list ap;
    va_start(ap, flags);
    const mode_t mode = mode_arg(flags, ap);
    va_end(ap);
    return openat_any(APIR_NEXT(openat), dirfd, path, flags, mode);
}
APIR_VDRM_EXPORT int openat64(int dirfd, const char* path, int flags, ...) {
    va_list ap;
    va_start(ap, flags);
    const mode_t mode = mode_arg(flags, ap);
    va_end(ap);
    return openat_any(APIR_NEXT(openat64), dirfd, path, flags, mode);
}

APIR_VDRM_EXPORT FILE* fopen(const char* path, const char* mode) {
    std::string buf;
    return APIR_NEXT(fopen)(redirect(path, buf), mode);
}
APIR_VDRM_EXPORT FILE* fopen64(const char* path, const char* mode) {
    std::string buf;
    return APIR_NEXT(fopen64)(redirect(path, buf), mode);
}
APIR_VDRM_EXPORT DIR* opendir(const char* path) {
    std::string buf;
    return APIR_NEXT(opendir)(redirect(path, buf));
}

// --- close, ioctl, mmap, munmap

APIR_VDRM_EXPORT int close(int fd) {
    if (sim_file(fd) < 0) return APIR_NEXT(close)(fd);
    // The number stays taken (the descriptor open) until the device has let it go, so
    // that an open() on another thread cannot get it and then lose it here.
    const int r = release_fd(fd);
    const int rc = APIR_NEXT(close)(fd);
    if (r < 0) return fail_with(-r);
    return rc;
}

namespace {
// The node's descriptors in [first, last] stop being the node before the range is
// closed (as close() does), so that a later file on one of those numbers is not taken
// for the node.
void release_range(unsigned first, unsigned last) noexcept {
    if (g_open_nodes.load() == 0) return;
    for (unsigned fd = first; fd <= last && fd < unsigned(max_fd); ++fd)
        if (sim_file(int(fd)) >= 0) (void)release_fd(int(fd));
}
} // namespace

APIR_VDRM_EXPORT int close_range(unsigned first, unsigned last, int flags) noexcept {
    using Fn = int (*)(unsigned, unsigned, int);
    static const auto real = next<Fn>("close_range");
    const bool closes = (flags & ~(CLOSE_RANGE_UNSHARE | CLOSE_RANGE_CLOEXEC)) == 0 &&
                        (flags & CLOSE_RANGE_CLOEXEC) == 0 && first <= last;
    if (closes) release_range(first, last);
    return real ? real(first, last, flags) : int(::syscall(SYS_close_range, first, last, flags));
}

APIR_VDRM_EXPORT void closefrom(int lowfd) noexcept {
    using Fn = void (*)(int);
    static const auto real = next<Fn>("closefrom");
    release_range(unsigned(std::max(lowfd, 0)), ~0u);
    if (real)
        real(lowfd);
    else
        (void)::syscall(SYS_close_range, unsigned(std::max(lowfd, 0)), ~0u, 0);
}

APIR_VDRM_EXPORT int dup(int fd) noexcept {
    const int s = sim_file(fd);
    const int n = APIR_NEXT(dup)(fd);
    return s < 0 ? n : adopt_fd(n, s);
}

namespace {
template <class Real>
int dup_onto(Real real, int fd, int newfd, int flags) noexcept {
    const int s = sim_file(fd);
    if (s < 0 && sim_file(newfd) < 0) return real(fd, newfd, flags);
    if (fd == newfd) return real(fd, newfd, flags);
    const int n = real(fd, newfd, flags);
    if (n < 0) return n;
    if (sim_file(n) >= 0) (void)release_fd(n); // newfd was the node: closed by dup2
    return s < 0 ? n : adopt_fd(n, s);
}
} // namespace

APIR_VDRM_EXPORT int dup2(int fd, int newfd) noexcept {
    return dup_onto([](int a, int b, int) { return APIR_NEXT(dup2)(a, b); }, fd, newfd, 0);
}
APIR_VDRM_EXPORT int dup3(int fd, int newfd, int flags) noexcept {
    return dup_onto(APIR_NEXT(dup3), fd, newfd, flags);
}

APIR_VDRM_EXPORT int fcntl(int fd, int cmd, ...) {
    va_list ap;
    va_start(ap, cmd);
    // Every command's third argument, when it has one, is an int or a pointer.
    void* arg = va_arg(ap, void*);
    va_end(ap);
    const int r = APIR_NEXT(fcntl)(fd, cmd, arg);
    if (r < 0 || (cmd != F_DUPFD && cmd != F_DUPFD_CLOEXEC)) return r;
    const int s = sim_file(fd);
    return s < 0 ? r : adopt_fd(r, s);
}
APIR_VDRM_EXPORT int fcntl64(int fd, int cmd, ...) {
    va_list ap;
    va_start(ap, cmd);
    void* arg = va_arg(ap, void*);
    va_end(ap);
    const int r = APIR_NEXT(fcntl64)(fd, cmd, arg);
    if (r < 0 || (cmd != F_DUPFD && cmd != F_DUPFD_CLOEXEC)) return r;
    const int s = sim_file(fd);
    return s < 0 ? r : adopt_fd(r, s);
}

APIR_VDRM_EXPORT int ioctl(int fd, unsigned long request, ...) noexcept {
    va_list ap;
    va_start(ap, request);
    void* arg = va_arg(ap, void*);
    va_end(ap);
    const int s = sim_file(fd);
    if (s < 0) return APIR_NEXT(ioctl)(fd, request, arg);
    if (g_state.load() == st_forked) return fail_with(ENODEV);
    int r = 0;
    {
        InDevice in;
        r = g_vdrm->dev->ioctl(s, request, arg);
    }
    return r < 0 ? fail_with(-r) : r;
}

namespace {
void* map_node(int s, void* addr, size_t length, int prot, int flags, off_t offset) noexcept {
    // The simulated device maps blobs shared and read-write wherever the kernel puts them.
    if (g_state.load() == st_forked) {
        errno = ENODEV;
        return MAP_FAILED;
    }
    if ((flags & MAP_TYPE) != MAP_SHARED || (flags & MAP_FIXED) || addr != nullptr ||
        (prot & ~(PROT_READ | PROT_WRITE)) != 0) {
        errno = EINVAL;
        return MAP_FAILED;
    }
    void* p = nullptr;
    g_mappings.fetch_add(1); // before the mapping exists: munmap must not miss it
    int r = 0;
    {
        InDevice in;
        r = g_vdrm->dev->mmap(s, uint64_t(offset), length, &p);
    }
    if (r < 0) {
        g_mappings.fetch_sub(1);
        errno = -r;
        return MAP_FAILED;
    }
    return p;
}
} // namespace

APIR_VDRM_EXPORT void* mmap(void* addr, size_t length, int prot, int flags, int fd,
                            off_t offset) noexcept {
    const int s = (flags & MAP_ANONYMOUS) ? -1 : sim_file(fd);
    if (s < 0) return APIR_NEXT(mmap)(addr, length, prot, flags, fd, offset);
    return map_node(s, addr, length, prot, flags, offset);
}
APIR_VDRM_EXPORT void* mmap64(void* addr, size_t length, int prot, int flags, int fd,
                              off64_t offset) noexcept {
    const int s = (flags & MAP_ANONYMOUS) ? -1 : sim_file(fd);
    if (s < 0) return APIR_NEXT(mmap64)(addr, length, prot, flags, fd, offset);
    return map_node(s, addr, length, prot, flags, offset);
}

// Any range, as munmap(2): the pages of the node's mappings in it are unmapped (with
// whatever else is there), and a mapping with no page left releases its object.
APIR_VDRM_EXPORT int munmap(void* addr, size_t length) noexcept {
    if (g_mappings.load() == 0 || g_state.load() != st_ready || t_in_device)
        return APIR_NEXT(munmap)(addr, length);
    size_t released = 0;
    int r = 0;
    {
        InDevice in;
        r = g_vdrm->dev->munmap_range(addr, length, &released);
    }
    if (r == -ENOENT || r == -EINVAL) // no mapping of the node there, or a bad range
        return APIR_NEXT(munmap)(addr, length);
    g_mappings.fetch_sub(int(released));
    return r < 0 ? fail_with(-r) : 0;
}

// --- stat, access, readlink, realpath

namespace {
template <class Real, class St>
int stat_any(Real real, const char* path, St* st) noexcept {
    if (is_node(path)) {
        static_assert(sizeof(St) == sizeof(struct stat));
        node_stat(reinterpret_cast<struct stat*>(st));
        return 0;
    }
    std::string buf;
    return real(redirect(path, buf), st);
}
template <class Real, class St>
int fstat_any(Real real, int fd, St* st) noexcept {
    if (sim_file(fd) < 0) return real(fd, st);
    node_stat(reinterpret_cast<struct stat*>(st));
    return 0;
}
template <class Real, class St>
int fstatat_any(Real real, int dirfd, const char* path, St* st, int flags) noexcept {
    if (path && path[0] == '\0' && (flags & AT_EMPTY_PATH))
        return fstat_any([&](int fd, St* s) { return real(fd, path, s, flags); }, dirfd, st);
    if (is_node(path)) {
        node_stat(reinterpret_cast<struct stat*>(st));
        return 0;
    }
    std::string buf;
    return real(dirfd, redirect(path, buf), st, flags);
}
} // namespace

APIR_VDRM_EXPORT int stat(const char* path, struct stat* st) noexcept {
    return stat_any(APIR_NEXT(stat), path, st);
}
APIR_VDRM_EXPORT int stat64(const char* path, struct stat64* st) noexcept {
    return stat_any(APIR_NEXT(stat64), path, st);
}
APIR_VDRM_EXPORT int lstat(const char* path, struct stat* st) noexcept {
    return stat_any(APIR_NEXT(lstat), path, st);
}
APIR_VDRM_EXPORT int lstat64(const char* path, struct stat64* st) noexcept {
    return stat_any(APIR_NEXT(lstat64), path, st);
}
APIR_VDRM_EXPORT int fstat(int fd, struct stat* st) noexcept {
    return fstat_any(APIR_NEXT(fstat), fd, st);
}
APIR_VDRM_EXPORT int fstat64(int fd, struct stat64* st) noexcept {
    return fstat_any(APIR_NEXT(fstat64), fd, st);
}
APIR_VDRM_EXPORT int fstatat(int dirfd, const char* path, struct stat* st, int flags) noexcept {
    return fstatat_any(APIR_NEXT(fstatat), dirfd, path, st, flags);
}
APIR_VDRM_EXPORT int fstatat64(int dirfd, const char* path, struct stat64* st, int flags) noexcept {
    return fstatat_any(APIR_NEXT(fstatat64), dirfd, path, st, flags);
}

namespace {
void node_statx(struct statx* sx) noexcept {
    struct stat st;
    node_stat(&st);
    std::memset(sx, 0, sizeof *sx);
    sx->stx_mask = STATX_BASIC_STATS;
    sx->stx_blksize = uint32_t(st.st_blksize);
    sx->stx_nlink = uint32_t(st.st_nlink);
    sx->stx_mode = uint16_t(st.st_mode);
    sx->stx_ino = st.st_ino;
    sx->stx_rdev_major = major(st.st_rdev);
    sx->stx_rdev_minor = minor(st.st_rdev);
    sx->stx_dev_major = major(st.st_dev);
    sx->stx_dev_minor = minor(st.st_dev);
    for (auto* t : {&sx->stx_atime, &sx->stx_mtime, &sx->stx_ctime, &sx->stx_btime}) {
        t->tv_sec = st.st_mtim.tv_sec;
        t->tv_nsec = uint32_t(st.st_mtim.tv_nsec);
    }
}
} // namespace

APIR_VDRM_EXPORT int statx(int dirfd, const char* path, int flags, unsigned int mask,
                           struct statx* sx) noexcept {
    const bool self = path[0] == '\0' && (flags & AT_EMPTY_PATH) && sim_file(dirfd) >= 0;
    if (self || is_node(path)) {
        node_statx(sx);
        return 0;
    }
    std::string buf;
    return APIR_NEXT(statx)(dirfd, redirect(path, buf), flags, mask, sx);
}

APIR_VDRM_EXPORT int access(const char* path, int mode) noexcept {
    if (is_node(path)) return (mode & X_OK) ? fail_with(EACCES) : 0;
    std::string buf;
    return APIR_NEXT(access)(redirect(path, buf), mode);
}
APIR_VDRM_EXPORT int faccessat(int dirfd, const char* path, int mode, int flags) noexcept {
    if (is_node(path)) return (mode & X_OK) ? fail_with(EACCES) : 0;
    std::string buf;
    return APIR_NEXT(faccessat)(dirfd, redirect(path, buf), mode, flags);
}

APIR_VDRM_EXPORT ssize_t readlink(const char* path, char* out, size_t size) noexcept {
    if (is_node(path)) return fail_with(EINVAL); // a device node, not a link
    std::string buf;
    return APIR_NEXT(readlink)(redirect(path, buf), out, size);
}

namespace {
char* realpath_any(const char* path, char* resolved, size_t resolved_len) noexcept {
    if (is_node(path)) {
        const std::string& p = g_vdrm->node_path;
        if (!resolved) return ::strdup(p.c_str());
        if (p.size() + 1 > resolved_len) {
            errno = ENAMETOOLONG;
            return nullptr;
        }
        std::memcpy(resolved, p.c_str(), p.size() + 1);
        return resolved;
    }
    std::string buf;
    return APIR_NEXT(realpath)(redirect(path, buf), resolved);
}
} // namespace

APIR_VDRM_EXPORT char* realpath(const char* path, char* resolved) noexcept {
    return realpath_any(path, resolved, PATH_MAX);
}
APIR_VDRM_EXPORT char* __realpath_chk(const char* path, char* resolved,
                                      size_t resolved_len) noexcept {
    return realpath_any(path, resolved, resolved ? resolved_len : PATH_MAX);
}

// --- The control functions (include/apir/vdrm.h).

APIR_VDRM_EXPORT int apir_vdrm_set_host(const struct apir_vdrm_host_setup* setup) {
    auto release = [&] {
        if (setup && setup->release) setup->release(setup->user);
    };
    if (!ready()) {
        release();
        return -ENODEV;
    }
    Vdrm& v = *g_vdrm;
    if (!setup) {
        v.dev->set_host(v.settings.sim.host, v.settings.sim.deliver);
        return 0;
    }
    apir::HostOptions h;
    h.logger = v.settings.sim.host.logger;
    std::string why;
    if (setup->config && !apir::vdrm::parse_config(setup->config, '\n', h.config, why)) {
        release();
        return -EINVAL;
    }
    if (setup->version_major || setup->version_minor) {
        h.version_major = setup->version_major;
        h.version_minor = setup->version_minor;
    }
    std::function<bool(std::span<const std::byte>)> deliver;
    if (setup->deliver) {
        // Shared by the contexts that use it; release() runs when the last one goes.
        struct Hook {
            apir_vdrm_deliver_fn fn;
            void* user;
            void (*release)(void*);
            ~Hook() {
                if (release) release(user);
            }
        };
        std::shared_ptr<Hook> hook(new Hook{setup->deliver, setup->user, setup->release});
        deliver = [hook](std::span<const std::byte> c) {
            return hook->fn(hook->user, c.data(), c.size()) != 0;
        };
    } else {
        release();
    }
    v.dev->set_host(std::move(h), std::move(deliver));
    return 0;
}

APIR_VDRM_EXPORT int apir_vdrm_counts(struct apir_vdrm_counts* out) {
    if (!out) return -EINVAL;
    if (!ready()) return -ENODEV;
    const auto& d = *g_vdrm->dev;
    out->open_files = d.open_files();
    out->gem_handles = d.gem_handles();
    out->mappings = d.mappings();
    out->objects = d.objects();
    out->executed_commands = d.executed_commands();
    out->dropped_commands = d.dropped_commands();
    return 0;
}
