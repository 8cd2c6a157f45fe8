/* libapir-vdrm.so: a virtual virtio-gpu render node for unmodified programs.
 *
 * Preloaded (LD_PRELOAD=libapir-vdrm.so), the library makes the program see one
 * virtio-gpu render node (/dev/dri/renderD128 by default) backed by apir's simulated
 * device (apir::SimDevice) and apir's Host: device discovery through libdrm and the C
 * library (/dev/dri, /sys/dev/char/226:N, /sys/class/drm/renderDN), DRM_IOCTL_VERSION,
 * the virtio-gpu ioctls, mmap/munmap of blobs and close behave as Linux's driver does;
 * every other file, descriptor and call goes to the C library untouched. It is
 * configured by environment variables (docs/VDRM.md):
 *
 *   APIR_VDRM_BACKEND   the APIR backend library the host loads (apir.load_library.path)
 *   APIR_VDRM_CONFIG    more host configuration: key=value;key=value
 *   APIR_VDRM_CAPSETS   capsets offered: apir, venus, virgl2 or ids (default virgl2,venus,apir)
 *   APIR_VDRM_DEVICE    device parameters: kernel=6.1|6.12, 3d=0|1, blob=0|1,
 *                       context_init=0|1, host_visible=BYTES, apir_blob=0|1,
 *                       driver=NAME, minor=N
 *   APIR_VDRM_FAULT     faults: OP=ERRNO[@AFTER][xTIMES], silent-host (comma-separated)
 *   APIR_VDRM_LOG       host log level: off (default), error, warn, info, debug
 *
 * A program that knows it runs under the virtual node can also set the host of the
 * contexts it creates next with the functions below, found with
 * dlsym(RTLD_DEFAULT, "apir_vdrm_set_host"): they exist only where the library is
 * loaded. apir's own session suite uses them to run each test's host through the node.
 */
#ifndef APIR_VDRM_H
#define APIR_VDRM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Called with each command submitted to a context; 0 drops it (the host never sees it). */
typedef int (*apir_vdrm_deliver_fn)(void* user, const void* command, size_t size);

struct apir_vdrm_host_setup {
    /* Host configuration, "key=value" lines separated by '\n' (replaces the environment's). */
    const char* config;
    /* The version the host reports in HANDSHAKE (0, 0: the protocol's). */
    uint32_t version_major, version_minor;
    /* Optional delivery hook and its argument; release(user), if given, runs once when no
     * context uses the hook any more (or right away when the call fails). */
    apir_vdrm_deliver_fn deliver;
    void* user;
    void (*release)(void* user);
};

/* The host of the contexts created from now on (CONTEXT_INIT, or the first blob or
 * execbuffer of a file); null: back to the environment's. 0, or a negative errno
 * (-ENODEV: the virtual node is disabled). */
int apir_vdrm_set_host(const struct apir_vdrm_host_setup* setup);

/* What is alive on the simulated device, to check that nothing leaks. */
struct apir_vdrm_counts {
    size_t open_files, gem_handles, mappings, objects;
    uint64_t executed_commands, dropped_commands;
};
int apir_vdrm_counts(struct apir_vdrm_counts* out);

#ifdef __cplusplus
}
#endif

#endif /* APIR_VDRM_H */
