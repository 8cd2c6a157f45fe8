// The one translation of failed virtio-gpu system calls into apir::Error.
#include "apir/internal/virtgpu_ioctl.hpp"

#include <cerrno>
#include <cstring>

namespace apir::drm {
namespace {

std::string_view call_name(Syscall c) {
    switch (c) {
    case Syscall::enumerate:
        return "drmGetDevices2";
    case Syscall::open:
        return "open";
    case Syscall::version:
        return "DRM_IOCTL_VERSION";
    case Syscall::getparam:
        return "VIRTGPU_GETPARAM";
    case Syscall::get_caps:
        return "VIRTGPU_GET_CAPS";
    case Syscall::context_init:
        return "VIRTGPU_CONTEXT_INIT";
    case Syscall::resource_create_blob:
        return "VIRTGPU_RESOURCE_CREATE_BLOB";
    case Syscall::map:
        return "VIRTGPU_MAP";
    case Syscall::mmap:
        return "mmap";
    case Syscall::execbuffer:
        return "VIRTGPU_EXECBUFFER";
    }
    return "?";
}

struct Translation {
    Errc code;
    std::string_view hint;
};

Translation translate(Syscall call, int err) {
    using enum Syscall;
    // A device that went away fails every later call the same way.
    if ((err == ENODEV || err == EIO) && call != enumerate && call != open)
        return {Errc::disconnected, "the virtio-gpu device stopped answering (host crash or "
                                    "device reset); reopen the transport"};
    switch (call) {
    case enumerate:
        if (err == ENOENT)
            return {Errc::no_device, "there is no /dev/dri: no DRM driver is loaded; in a VM, "
                                     "give it a virtio-gpu device and load the virtio_gpu module"};
        return {Errc::no_device, "the DRM render nodes cannot be listed"};
    case open:
        if (err == EACCES || err == EPERM)
            return {Errc::no_device, "permission denied: add the user to the group that owns the "
                                     "node (usually 'render')"};
        if (err == EMFILE || err == ENFILE) return {Errc::out_of_memory, "too many open files"};
        return {Errc::no_device, "the node cannot be opened"};
    case version:
        return {Errc::device_error, "the node does not answer DRM_IOCTL_VERSION"};
    case getparam:
        if (err == EINVAL)
            return {Errc::unsupported, "the kernel does not know this parameter: blobs need "
                                       "Linux 5.11 or later, context init 5.16 or later"};
        return {Errc::device_error, ""};
    case get_caps:
        if (err == ENOSYS)
            return {Errc::unsupported, "the device offers no capsets: the VMM started virtio-gpu "
                                       "without 3D acceleration"};
        if (err == EINVAL)
            return {Errc::unsupported, "the host does not offer this capset: the APIR capset needs "
                                       "a virglrenderer with the APIR component and a VMM that "
                                       "routes capset 10 (or use the Venus capset)"};
        if (err == EBUSY)
            return {Errc::timeout, "the host did not answer the capset query within 5 s"};
        return {Errc::device_error, ""};
    case context_init:
        if (err == EINVAL)
            return {Errc::unsupported, "the kernel or the VMM lacks context init, or the host "
                                       "does not offer the capset"};
        if (err == EEXIST)
            return {Errc::device_error, "a context already exists on this file: CONTEXT_INIT must "
                                        "come before any blob or execbuffer"};
        return {Errc::device_error, ""};
    case resource_create_blob:
        if (err == ENOMEM || err == ENOSPC)
            return {
                Errc::out_of_memory,
                "the host-visible memory region is full: release shared memory, lower "
                "VirtgpuOptions::shmem_cache_bytes, or give the VM a larger host-visible region"};
        if (err == EINVAL)
            return {Errc::unsupported, "the device refuses mappable HOST3D blobs: it needs blob "
                                       "resources, 3D and a host-visible memory region"};
        return {Errc::device_error, ""};
    case map:
        if (err == ENOMEM) return {Errc::out_of_memory, ""};
        return {Errc::device_error, "the kernel could not give the blob an mmap offset"};
    case mmap:
        if (err == ENOMEM) return {Errc::out_of_memory, "the process is out of address space"};
        return {Errc::device_error, "the host could not map the blob into the guest"};
    case execbuffer:
        if (err == ENOMEM)
            return {Errc::out_of_memory, "the command is too large or memory is low"};
        if (err == ENOSYS) return {Errc::unsupported, "the device has no 3D support"};
        if (err == EINVAL)
            return {Errc::device_error, "the kernel refused the submission (the context must have "
                                        "been created with one ring by CONTEXT_INIT)"};
        return {Errc::device_error, ""};
    }
    return {Errc::device_error, ""};
}

} // namespace

Error sys_error(Syscall call, int err, std::string_view what) {
    auto [code, hint] = translate(call, err);
    const char* desc = strerrordesc_np(err);
    const char* name = strerrorname_np(err);
    std::string detail =
        fmt::format("{}{}{} failed: {} ({})", call_name(call), what.empty() ? "" : " ", what,
                    desc ? desc : "unknown error", name ? name : fmt::format("errno {}", err));
    if (!hint.empty()) detail += fmt::format("; {}", hint);
    return Error(code, std::move(detail)).with_errno(err);
}

} // namespace apir::drm
