// Internal to libapir-vdrm.so: the state its parts share (the node, the descriptors that
// are the node, the lifecycle state) and the functions they call in each other.
//
//   interpose.cpp   the C library functions the node stands in for (vdrm.map)
//   node.cpp        the node's descriptors: open, dup, release, stat
//   fake_tree.cpp   the private sysfs and /dev/dri tree, and the paths redirected to it
//   lifecycle.cpp   setting the node up on first use; exit, fork and orphaned trees
//   control.cpp     the control functions (include/apir/vdrm/vdrm.h)
//
// Each file includes this header first: the C library's functions are defined under
// their own names, with no 64-bit renaming and no fortified wrappers.
#pragma once
#undef _FORTIFY_SOURCE
#undef _FILE_OFFSET_BITS

#include "vdrm_config.hpp"

#include "apir/sim/sim_device.hpp"

#include <atomic>
#include <cerrno>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <dlfcn.h>
#include <sys/stat.h>
#include <time.h>

#define APIR_VDRM_EXPORT extern "C" __attribute__((visibility("default")))

// The next definition of a C library function (dlsym RTLD_NEXT), looked up once.
#define APIR_NEXT(fn)                                                                              \
    ([]() noexcept {                                                                               \
        static const auto f = ::apir::vdrm::next<decltype(&::fn)>(#fn);                            \
        return f;                                                                                  \
    }())

#pragma GCC visibility push(hidden)

namespace apir::vdrm {

template <class F>
F next(const char* name) noexcept {
    return reinterpret_cast<F>(dlsym(RTLD_NEXT, name));
}

constexpr int max_fd = 1 << 16;
// Descriptor -> the simulated device's file + 1 (0: not a virtual node).
inline std::atomic<int> g_fd_sim[max_fd];
inline std::atomic<int> g_open_nodes{0};

struct Vdrm {
    Settings settings;
    std::string root;              // the private tree
    std::string node_path;         // /dev/dri/renderDN
    std::string sys_char;          // /sys/dev/char/226:N
    std::string sys_class;         // /sys/class/drm/renderDN
    std::vector<std::string> made; // what to remove at exit, in creation order
    std::shared_ptr<SimDevice> dev;
    std::mutex refs_mu;
    std::map<int, int> refs; // descriptors (dup) per file of the device
    struct timespec born {};
};

// 0 not yet, 1 initializing, 2 ready, 3 disabled or exit has begun, 4 a child of fork():
// the device and its host threads are the parent's, and the node is gone.
enum : int { st_none, st_init, st_ready, st_gone, st_forked };
inline std::atomic<int> g_state{st_none};
// Never freed once made: a thread may still be inside a call when exit begins.
inline Vdrm* g_vdrm = nullptr;
// In a call into the device: its own munmap calls (a blob's memory freed, a range
// unmapped under its lock) come back to munmap() and must pass through, or they
// would wait for the lock the device holds.
inline thread_local bool t_in_device = false;
struct InDevice {
    bool was = t_in_device;
    InDevice() noexcept { t_in_device = true; }
    ~InDevice() { t_in_device = was; }
    InDevice(const InDevice&) = delete;
    InDevice& operator=(const InDevice&) = delete;
};

void say(const std::string& line) noexcept;

inline int fail_with(int err) noexcept {
    errno = err;
    return -1;
}

// --- lifecycle.cpp

/// Sets the virtual node up on first use; false when it is disabled.
bool ready() noexcept;

// --- fake_tree.cpp

/// Builds the private tree under v.root (what it makes is listed in v.made).
bool build_tree(Vdrm& v);
/// Removes what build_tree made, and v.root.
void remove_tree(Vdrm& v);
/// Whether path is the node's (initializes the node when path may concern it).
bool is_node(const char* path) noexcept;
/// The path to use instead of path: the private tree's (in buf), or path itself.
const char* redirect(const char* path, std::string& buf) noexcept;

// --- node.cpp

/// The simulated device's file of descriptor fd, or -1 when fd is not the node.
int sim_file(int fd) noexcept;
/// open() of the node: a new descriptor (a memfd) and a file of the device.
int open_node(int flags) noexcept;
/// fd stops being a descriptor of the node; 0, or a negative errno.
int release_fd(int fd) noexcept;
/// newfd, a fresh descriptor duplicated from one of file s, is the node too.
int adopt_fd(int newfd, int s) noexcept;
void node_stat(struct stat* st) noexcept;
void node_statx(struct statx* sx) noexcept;

} // namespace apir::vdrm

#pragma GCC visibility pop
