// Internal: the virtio-gpu kernel interface the DRM transport speaks (docs/PROTOCOL.md §5, §6).
//
// libdrm 2.4.114 (Debian 12) ships a virtgpu_drm.h from before context init (Linux
// 5.16), blob resources (5.11) and ring indexes. What it lacks is defined here, each
// under a guard, so that a newer system header wins; everything is checked against the
// sizes and numbers the kernel expects.
#pragma once

#include <cstddef>
#include <cstdint>

#include <drm.h>
#include <virtgpu_drm.h>

namespace apir::uapi {

// --- GETPARAM parameter ids (the value pointer receives 4 bytes only).
enum class Param : uint64_t {
    features_3d = 1,
    capset_query_fix = 2,
    resource_blob = 3,
    host_visible = 4,
    cross_device = 5,
    context_init = 6,
    supported_capset_ids = 7,
    explicit_debug_name = 8,
};
inline constexpr uint64_t param_count = 8;

// --- RESOURCE_CREATE_BLOB (Linux 5.11)
inline constexpr uint32_t blob_mem_guest = 1;
inline constexpr uint32_t blob_mem_host3d = 2;
inline constexpr uint32_t blob_mem_host3d_guest = 3;
inline constexpr uint32_t blob_flag_use_mappable = 1;
inline constexpr uint32_t blob_flag_use_shareable = 2;
inline constexpr uint32_t blob_flag_use_cross_device = 4;
inline constexpr uint32_t blob_flags_known = 7;

#ifdef DRM_IOCTL_VIRTGPU_RESOURCE_CREATE_BLOB
using resource_create_blob = ::drm_virtgpu_resource_create_blob;
#else
struct resource_create_blob {
    __u32 blob_mem;
    __u32 blob_flags;
    __u32 bo_handle;  // out
    __u32 res_handle; // out
    __u64 size;
    __u32 pad;
    __u32 cmd_size; // a command run by the host at creation (HOST3D); 0 here
    __u64 cmd;
    __u64 blob_id;
};
#endif
inline constexpr unsigned long ioctl_resource_create_blob =
    DRM_IOWR(DRM_COMMAND_BASE + 0x0a, resource_create_blob);

// --- CONTEXT_INIT (Linux 5.16)
inline constexpr uint64_t context_param_capset_id = 1;
inline constexpr uint64_t context_param_num_rings = 2;
inline constexpr uint64_t context_param_poll_rings_mask = 3;
inline constexpr uint64_t context_param_debug_name = 4; // Linux 6.12

#ifdef DRM_IOCTL_VIRTGPU_CONTEXT_INIT
using context_set_param = ::drm_virtgpu_context_set_param;
using context_init = ::drm_virtgpu_context_init;
#else
struct context_set_param {
    __u64 param;
    __u64 value;
};
struct context_init {
    __u32 num_params;
    __u32 pad;
    __u64 ctx_set_params; // pointer to an array of context_set_param
};
#endif
inline constexpr unsigned long ioctl_context_init = DRM_IOWR(DRM_COMMAND_BASE + 0x0b, context_init);

// --- EXECBUFFER with a ring index (Linux 5.16). Linux 6.1 ends the struct with
// ring_idx + pad (40 bytes); 6.12 turns the pad into syncobj fields (64 bytes). The DRM
// core zero-fills whatever a caller's shorter struct lacks, so either size works on
// either kernel.
inline constexpr uint32_t execbuf_fence_fd_in = 0x01;
inline constexpr uint32_t execbuf_fence_fd_out = 0x02;
inline constexpr uint32_t execbuf_ring_idx = 0x04;

#ifdef VIRTGPU_EXECBUF_RING_IDX
using execbuffer = ::drm_virtgpu_execbuffer;
#else
struct execbuffer {
    __u32 flags;
    __u32 size;
    __u64 command; // pointer to the command bytes
    __u64 bo_handles;
    __u32 num_bo_handles;
    __s32 fence_fd;
    __u32 ring_idx;
    __u32 pad;
};
#endif
inline constexpr unsigned long ioctl_execbuffer =
    DRM_IOWR(DRM_COMMAND_BASE + DRM_VIRTGPU_EXECBUFFER, execbuffer);

// --- What the old header already has.
using getparam = ::drm_virtgpu_getparam;
using get_caps = ::drm_virtgpu_get_caps;
using map = ::drm_virtgpu_map;
using version = ::drm_version;
using gem_close = ::drm_gem_close;
inline constexpr unsigned long ioctl_getparam = DRM_IOCTL_VIRTGPU_GETPARAM;
inline constexpr unsigned long ioctl_get_caps = DRM_IOCTL_VIRTGPU_GET_CAPS;
inline constexpr unsigned long ioctl_map = DRM_IOCTL_VIRTGPU_MAP;
inline constexpr unsigned long ioctl_version = DRM_IOCTL_VERSION;
inline constexpr unsigned long ioctl_gem_close = DRM_IOCTL_GEM_CLOSE;

/// The APIR capset (id 10, version 0) as GET_CAPS fills it.
struct apir_capset {
    uint32_t apir_version;
    uint32_t supports_blob_resources;
    uint32_t reserved[4];
};

// --- Layout checks: what the kernel expects (docs/PROTOCOL.md §6).
static_assert(sizeof(context_set_param) == 16);
static_assert(sizeof(context_init) == 16 && offsetof(context_init, ctx_set_params) == 8);
static_assert(sizeof(resource_create_blob) == 48);
static_assert(offsetof(resource_create_blob, bo_handle) == 8 &&
              offsetof(resource_create_blob, res_handle) == 12 &&
              offsetof(resource_create_blob, size) == 16 &&
              offsetof(resource_create_blob, cmd_size) == 28 &&
              offsetof(resource_create_blob, cmd) == 32 &&
              offsetof(resource_create_blob, blob_id) == 40);
static_assert(sizeof(execbuffer) == 40 || sizeof(execbuffer) == 64);
static_assert(offsetof(execbuffer, command) == 8 && offsetof(execbuffer, bo_handles) == 16 &&
              offsetof(execbuffer, num_bo_handles) == 24 && offsetof(execbuffer, fence_fd) == 28 &&
              offsetof(execbuffer, ring_idx) == 32);
static_assert(sizeof(getparam) == 16 && offsetof(getparam, value) == 8);
static_assert(sizeof(get_caps) == 24 && offsetof(get_caps, addr) == 8 &&
              offsetof(get_caps, size) == 16);
static_assert(sizeof(map) == 16 && offsetof(map, handle) == 8);
static_assert(sizeof(gem_close) == 8);
static_assert(sizeof(apir_capset) == 24);

static_assert(ioctl_getparam == 0xc0106443);
static_assert(ioctl_get_caps == 0xc0186449);
static_assert(ioctl_map == 0xc0106441);
static_assert(ioctl_resource_create_blob == 0xc030644a);
static_assert(ioctl_context_init == 0xc010644b);
static_assert(ioctl_execbuffer == 0xc0286442 || ioctl_execbuffer == 0xc0406442);
static_assert(ioctl_gem_close == 0x40086409);
#if defined(__LP64__)
static_assert(sizeof(version) == 64 && ioctl_version == 0xc0406400);
#endif

// A newer system header must agree with the numbers used here.
#ifdef VIRTGPU_PARAM_RESOURCE_BLOB
static_assert(VIRTGPU_PARAM_RESOURCE_BLOB == uint64_t(Param::resource_blob));
static_assert(VIRTGPU_PARAM_HOST_VISIBLE == uint64_t(Param::host_visible));
static_assert(VIRTGPU_BLOB_MEM_HOST3D == blob_mem_host3d);
static_assert(VIRTGPU_BLOB_FLAG_USE_MAPPABLE == blob_flag_use_mappable);
#endif
#ifdef VIRTGPU_PARAM_CONTEXT_INIT
static_assert(VIRTGPU_PARAM_CONTEXT_INIT == uint64_t(Param::context_init));
static_assert(VIRTGPU_PARAM_SUPPORTED_CAPSET_IDs == uint64_t(Param::supported_capset_ids));
static_assert(VIRTGPU_CONTEXT_PARAM_CAPSET_ID == context_param_capset_id);
static_assert(VIRTGPU_CONTEXT_PARAM_NUM_RINGS == context_param_num_rings);
static_assert(VIRTGPU_CONTEXT_PARAM_POLL_RINGS_MASK == context_param_poll_rings_mask);
#endif
#ifdef VIRTGPU_EXECBUF_RING_IDX
static_assert(VIRTGPU_EXECBUF_RING_IDX == execbuf_ring_idx);
#endif
static_assert(VIRTGPU_PARAM_3D_FEATURES == uint64_t(Param::features_3d));
static_assert(VIRTGPU_EXECBUF_FENCE_FD_OUT == execbuf_fence_fd_out);

} // namespace apir::uapi
