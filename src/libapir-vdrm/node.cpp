// libapir-vdrm.so: the node's descriptors. Each is a memfd (so that the number is the
// program's own) mapped to a file of the simulated device; dup'ed descriptors share
// the file, which is closed with its last descriptor. They stat() as the character
// device 226:N.
#include "node_state.hpp"

#include "apir/internal/unique_handle.hpp"

#include <cstring>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/sysmacros.h>
#include <unistd.h>

namespace apir::vdrm {

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

} // namespace apir::vdrm
