// libapir-vdrm.so: the C library functions the node stands in for (vdrm.map). A path
// that may concern the node is redirected to the private tree (fake_tree.cpp), the
// node's own path opens the node (node.cpp); ioctl, mmap, munmap and close of the
// node's descriptors go to the simulated device. Every other path and descriptor goes
// to the next definition (dlsym RTLD_NEXT), untouched.
#include "node_state.hpp"

#include <algorithm>
#include <climits>
#include <cstdarg>
#include <cstdio>
#include <cstring>

#include <dirent.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

using namespace apir::vdrm;

namespace {

std::atomic<int> g_mappings{0}; // the node's mappings (munmap's fast path when none)

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
