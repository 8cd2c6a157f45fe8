// Internal: one small helper per virtio-gpu ioctl, RAII owners of what they create,
// and the one place where a failed system call becomes an apir::Error.
//
// Helpers fill the kernel struct and return 0 or a negative errno; they never build
// errors themselves. Callers translate with sys_error() at the transport boundary.
#pragma once

#include "apir/virtgpu.hpp"

#include "apir/internal/virtgpu_uapi.hpp"

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <utility>

namespace apir::drm {

/// The system calls of the transport, for error messages.
enum class Syscall : uint8_t {
    enumerate,
    open,
    version,
    getparam,
    get_caps,
    context_init,
    resource_create_blob,
    map,
    mmap,
    execbuffer,
};

/// The one translation of a failed system call: an error code chosen by call and
/// errno, with errno attached and a detail naming the call, what it was doing and
/// what to check.
[[nodiscard]] Error sys_error(Syscall call, int err, std::string_view what);

// --- RAII owners. Each holds the device it came from; the transport keeps that alive.

/// An open render node.
class UniqueFd {
public:
    UniqueFd() = default;
    UniqueFd(DrmDevice* dev, int fd) noexcept : dev_(dev), fd_(fd) {}
    UniqueFd(UniqueFd&& o) noexcept
        : dev_(std::exchange(o.dev_, nullptr)), fd_(std::exchange(o.fd_, -1)) {}
    UniqueFd& operator=(UniqueFd&& o) noexcept {
        if (this != &o) {
            reset();
            dev_ = std::exchange(o.dev_, nullptr);
            fd_ = std::exchange(o.fd_, -1);
        }
        return *this;
    }
    ~UniqueFd() { reset(); }
    void reset() noexcept {
        if (dev_ && fd_ >= 0) (void)dev_->close(fd_);
        dev_ = nullptr;
        fd_ = -1;
    }
    [[nodiscard]] int get() const noexcept { return fd_; }
    explicit operator bool() const noexcept { return fd_ >= 0; }

private:
    DrmDevice* dev_ = nullptr;
    int fd_ = -1;
};

/// A GEM handle of an open node, closed with GEM_CLOSE.
class GemHandle {
public:
    GemHandle() = default;
    GemHandle(DrmDevice* dev, int fd, uint32_t handle) noexcept
        : dev_(dev), fd_(fd), handle_(handle) {}
    GemHandle(GemHandle&& o) noexcept
        : dev_(std::exchange(o.dev_, nullptr)), fd_(o.fd_), handle_(std::exchange(o.handle_, 0)) {}
    GemHandle& operator=(GemHandle&& o) noexcept {
        if (this != &o) {
            reset();
            dev_ = std::exchange(o.dev_, nullptr);
            fd_ = o.fd_;
            handle_ = std::exchange(o.handle_, 0);
        }
        return *this;
    }
    ~GemHandle() { reset(); }
    void reset() noexcept;
    [[nodiscard]] uint32_t get() const noexcept { return handle_; }

private:
    DrmDevice* dev_ = nullptr;
    int fd_ = -1;
    uint32_t handle_ = 0;
};

/// A mapping of a blob into this process.
class Mapping {
public:
    Mapping() = default;
    Mapping(DrmDevice* dev, void* addr, size_t size) noexcept
        : dev_(dev), addr_(addr), size_(size) {}
    Mapping(Mapping&& o) noexcept
        : dev_(std::exchange(o.dev_, nullptr)), addr_(std::exchange(o.addr_, nullptr)),
          size_(std::exchange(o.size_, 0)) {}
    Mapping& operator=(Mapping&& o) noexcept {
        if (this != &o) {
            reset();
            dev_ = std::exchange(o.dev_, nullptr);
            addr_ = std::exchange(o.addr_, nullptr);
            size_ = std::exchange(o.size_, 0);
        }
        return *this;
    }
    ~Mapping() { reset(); }
    void reset() noexcept {
        if (dev_ && addr_) (void)dev_->munmap(addr_, size_);
        dev_ = nullptr;
        addr_ = nullptr;
        size_ = 0;
    }
    [[nodiscard]] std::byte* data() const noexcept { return static_cast<std::byte*>(addr_); }
    [[nodiscard]] size_t size() const noexcept { return size_; }

private:
    DrmDevice* dev_ = nullptr;
    void* addr_ = nullptr;
    size_t size_ = 0;
};

// --- The seam's retry: once, on EINTR or EAGAIN (see DrmDevice).

[[nodiscard]] inline bool interrupted(int r) noexcept {
    return r == -EINTR || r == -EAGAIN;
}

/// dev.ioctl, retried once with the caller's arguments restored when it fails with
/// EINTR or EAGAIN (a signal, or a transiently busy device). Every helper below goes
/// through it, whatever the DrmDevice: libdrm's drmIoctl restarts such calls itself,
/// a simulated or wrapped device may not.
template <class Args>
int sys_ioctl(DrmDevice& dev, int fd, unsigned long request, Args& args) {
    const Args in = args;
    int r = dev.ioctl(fd, request, &args);
    if (interrupted(r)) {
        args = in;
        r = dev.ioctl(fd, request, &args);
    }
    return r;
}

/// dev.mmap, retried once on EINTR or EAGAIN.
inline int sys_mmap(DrmDevice& dev, int fd, uint64_t offset, size_t length, void** addr) {
    int r = dev.mmap(fd, offset, length, addr);
    if (interrupted(r)) r = dev.mmap(fd, offset, length, addr);
    return r;
}

// --- One helper per ioctl.

struct DriverVersion {
    int major = 0, minor = 0, patch = 0;
    std::string name;
};

/// DRM_IOCTL_VERSION: the driver's name and version.
inline int ioctl_version(DrmDevice& dev, int fd, DriverVersion& out) {
    char name[64] = {};
    uapi::version v{};
    v.name = name;
    v.name_len = sizeof(name) - 1;
    if (int r = sys_ioctl(dev, fd, uapi::ioctl_version, v); r < 0) return r;
    // The kernel reports the full length and copies what fits.
    out.name.assign(name, std::min<size_t>(v.name_len, sizeof(name) - 1));
    out.major = v.version_major;
    out.minor = v.version_minor;
    out.patch = v.version_patchlevel;
    return 0;
}

/// GETPARAM. The kernel writes only 4 bytes through the value pointer: zero it first.
inline int ioctl_getparam(DrmDevice& dev, int fd, uint64_t param, uint64_t& value) {
    uint64_t v = 0;
    uapi::getparam args{};
    args.param = param;
    args.value = reinterpret_cast<uintptr_t>(&v);
    int r = sys_ioctl(dev, fd, uapi::ioctl_getparam, args);
    value = r < 0 ? 0 : v;
    return r;
}

/// GET_CAPS: copies at most size bytes of the capset; the kernel does not say how many.
/// EBUSY (the kernel's wait for the host's answer ran out) is asked again until the
/// deadline (by default: not asked again), with a short pause between attempts.
inline int ioctl_get_caps(DrmDevice& dev, int fd, uint32_t capset, uint32_t version, void* data,
                          uint32_t size,
                          Deadline busy_deadline = Deadline::at(Clock::time_point::min())) {
    auto pause = std::chrono::milliseconds(1);
    for (;;) {
        uapi::get_caps args{};
        args.cap_set_id = capset;
        args.cap_set_ver = version;
        args.addr = reinterpret_cast<uintptr_t>(data);
        args.size = size;
        const int r = sys_ioctl(dev, fd, uapi::ioctl_get_caps, args);
        const auto now = Clock::now();
        if (r != -EBUSY || busy_deadline.expired(now)) return r;
        auto left = busy_deadline.is_never() ? pause : busy_deadline.time() - now;
        std::this_thread::sleep_for(std::min<Clock::duration>(pause, left));
        pause = std::min(pause * 2, std::chrono::milliseconds(100));
    }
}

/// CONTEXT_INIT with the capset, num_rings rings and no polled ring (a polled ring
/// would make every submit produce a fence the APIR host cannot signal). Must be the
/// first context-creating call on the fd: blobs and execbuffers create a default one.
inline int ioctl_context_init(DrmDevice& dev, int fd, uint32_t capset, uint32_t num_rings) {
    uapi::context_set_param params[3] = {
        {uapi::context_param_capset_id, capset},
        {uapi::context_param_num_rings, num_rings},
        {uapi::context_param_poll_rings_mask, 0},
    };
    uapi::context_init args{};
    args.num_params = 3;
    args.ctx_set_params = reinterpret_cast<uintptr_t>(params);
    return sys_ioctl(dev, fd, uapi::ioctl_context_init, args);
}

/// RESOURCE_CREATE_BLOB: host memory (HOST3D, blob id 0) the guest can map.
inline int ioctl_resource_create_blob(DrmDevice& dev, int fd, uint64_t size, uint32_t& handle,
                                      uint32_t& res_id) {
    uapi::resource_create_blob args{};
    args.blob_mem = uapi::blob_mem_host3d;
    args.blob_flags = uapi::blob_flag_use_mappable;
    args.size = size;
    args.blob_id = 0;
    int r = sys_ioctl(dev, fd, uapi::ioctl_resource_create_blob, args);
    handle = r < 0 ? 0 : args.bo_handle;
    res_id = r < 0 ? 0 : args.res_handle;
    return r;
}

/// MAP: the fake offset at which mmap finds the object.
inline int ioctl_map(DrmDevice& dev, int fd, uint32_t handle, uint64_t& offset) {
    uapi::map args{};
    args.handle = handle;
    int r = sys_ioctl(dev, fd, uapi::ioctl_map, args);
    offset = r < 0 ? 0 : args.offset;
    return r;
}

inline int ioctl_gem_close(DrmDevice& dev, int fd, uint32_t handle) {
    uapi::gem_close args{};
    args.handle = handle;
    return sys_ioctl(dev, fd, uapi::ioctl_gem_close, args);
}

/// EXECBUFFER on ring 0: no buffer objects, no fence fd, no syncobjs.
inline int ioctl_execbuffer(DrmDevice& dev, int fd, std::span<const std::byte> command) {
    uapi::execbuffer args{};
    args.flags = uapi::execbuf_ring_idx;
    args.size = static_cast<uint32_t>(command.size());
    args.command = reinterpret_cast<uintptr_t>(command.data());
    args.ring_idx = 0;
    return sys_ioctl(dev, fd, uapi::ioctl_execbuffer, args);
}

inline void GemHandle::reset() noexcept {
    if (dev_ && handle_ != 0) (void)ioctl_gem_close(*dev_, fd_, handle_);
    dev_ = nullptr;
    handle_ = 0;
}

} // namespace apir::drm
