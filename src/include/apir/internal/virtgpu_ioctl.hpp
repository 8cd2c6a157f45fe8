// Internal: one small helper per virtio-gpu ioctl, RAII owners of what they create,
// and the one place where a failed system call becomes an apir::Error.
//
// Helpers fill the kernel struct and return 0 or a negative errno; they never build
// errors themselves. Callers translate with sys_error() at the transport boundary.
#pragma once

#include "apir/virtgpu.hpp"

#include "apir/internal/unique_handle.hpp"
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

// --- RAII owners (apir::detail::UniqueHandle). Each holds the device it came from; the
// transport keeps that alive.

/// Closes an open render node through the device.
struct DrmFdTraits {
    DrmDevice* dev = nullptr;
    using handle_type = int;
    static constexpr int empty() noexcept { return -1; }
    void close(int fd) const noexcept {
        if (dev) (void)dev->close(fd);
    }
};
/// An open render node.
using UniqueFd = detail::UniqueHandle<DrmFdTraits>;

/// Closes a GEM handle of an open node with GEM_CLOSE.
struct GemHandleTraits {
    DrmDevice* dev = nullptr;
    int fd = -1;
    using handle_type = uint32_t;
    static constexpr uint32_t empty() noexcept { return 0; }
    void close(uint32_t handle) const noexcept; // below, after ioctl_gem_close
};
using GemHandle = detail::UniqueHandle<GemHandleTraits>;

/// Unmaps a blob's mapping through the device.
struct DrmMappingTraits {
    DrmDevice* dev = nullptr;
    using handle_type = detail::MappedRange;
    static constexpr detail::MappedRange empty() noexcept { return {}; }
    void close(detail::MappedRange m) const noexcept {
        if (dev) (void)dev->munmap(m.addr, m.size);
    }
};
/// A mapping of a blob into this process.
using Mapping = detail::UniqueHandle<DrmMappingTraits>;

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

inline void GemHandleTraits::close(uint32_t handle) const noexcept {
    if (dev) (void)ioctl_gem_close(*dev, fd, handle);
}

} // namespace apir::drm
