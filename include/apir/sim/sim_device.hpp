// apir::SimDevice: a simulated virtio-gpu device behind the DrmDevice seam, so that DRM
// code runs without a VM (apir's own tests and benchmarks, the virtual render node
// libapir-vdrm.so, and any program that wants a virtio-gpu device in-process).
// Meson: dependency('apir-sim'); pkg-config: apir-sim. Built with the drm feature.
//
// It answers every ioctl the transport uses the way Linux's virtio-gpu driver does
// (docs/PROTOCOL.md §6), including its error returns: GETPARAM writes 4 bytes, CONTEXT_INIT
// must come first and is not rolled back, resource ids are global from 2, GEM handles
// are per file from 1 (lowest free reused), MAP gives fake offsets from 4 GiB, mmap
// wants the exact offset. Blobs are backed by memfd memory: the guest's mmap is a
// second mapping of the pages the host writes. Each context created with the APIR or
// Venus capset runs an apir::Host on its own thread, fed by EXECBUFFER. With
// SimConfig::check_user_memory, a pointer the caller passes (the struct, and the
// pointers inside it) is copied as the kernel copies it: memory the caller cannot read
// or write is -EFAULT, never a fault in the device.
// Destroying a context never waits longer than SimConfig::stop_grace for its host.
//
// Every step can be made to fail (fail()), and what is alive is counted (open files,
// GEM handles, mappings, objects) so that tests can prove nothing leaks.
//
//     auto dev = std::make_shared<apir::SimDevice>(apir::SimConfig{});
//     apir::VirtgpuOptions o;
//     o.device = dev;
//     dev->fail(apir::SimOp::create_blob, ENOMEM);
//     auto t = apir::VirtgpuTransport::open(o);     // works
//     auto page = t->create_shmem(4096);            // OUT_OF_MEMORY, nothing leaked
#pragma once

#include "apir/host.hpp"
#include "apir/virtgpu.hpp"

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <vector>

namespace apir {

/// The steps of the simulated device, each of which can be made to fail.
enum class SimOp : uint8_t {
    enumerate,
    open,
    close,
    version,
    getparam,
    get_caps,
    context_init,
    create_blob,
    map,
    gem_close,
    execbuffer,
    mmap,
    munmap,
    count_
};

struct SimNode {
    std::string path = "/dev/dri/renderD128";
    std::string driver = "virtio_gpu";
    int driver_major = 0;
    /// open() fails with this errno (e.g. EACCES) when non-zero.
    int open_errno = 0;
    std::string bus = "pci 0000:00:02.0 [1af4:1050]";
};

struct SimCapset {
    uint32_t id = 0;
    uint32_t max_version = 0;
    std::vector<std::byte> data;
};

/// Which kernel the device imitates where they differ (CONTEXT_INIT takes at most 3
/// params on 6.1 and 4 on 6.12; 6.12 knows GETPARAM 8).
enum class SimKernel : uint8_t { linux_6_1, linux_6_12 };

struct SimConfig {
    std::vector<SimNode> nodes = {SimNode{}};
    SimKernel kernel = SimKernel::linux_6_12;
    bool has_3d = true;
    bool has_blob = true;
    bool has_context_init = true;
    /// Size of the host-visible memory region; 0: none (no mappable HOST3D blobs).
    uint64_t host_visible_bytes = uint64_t{4} << 30;
    /// Default: VIRGL2, VENUS and APIR (blob support reported).
    std::vector<SimCapset> capsets = default_capsets();
    /// Options of the host each APIR/Venus context runs (the command-type offset is
    /// set from the context's capset).
    apir::HostOptions host;
    /// Called with each submitted command; false drops it (the host never sees it).
    std::function<bool(std::span<const std::byte>)> deliver;
    /// How long destroying a context (its file's close, the device's destruction) waits
    /// for its host thread to come back; past it the thread is abandoned (detached, with
    /// what it uses kept alive until it returns) and `logger` says so.
    std::chrono::milliseconds stop_grace{2000};
    /// The device's own messages (a host thread abandoned).
    apir::Logger logger{apir::stderr_sink, apir::LogLevel::warn};
    /// Whether ioctl() checks the caller's memory as the kernel does (a pointer it cannot
    /// read or write is -EFAULT) instead of copying it with memcpy (a bad pointer
    /// faults). The check costs system calls on every ioctl (process_vm_readv/writev:
    /// the struct in and out, and what it points to); the virtual render node, whose
    /// callers are any program, turns it on.
    bool check_user_memory = false;

    static std::vector<SimCapset> default_capsets();
    /// An APIR capset of the given bytes (apir_version, supports_blob_resources).
    static SimCapset apir_capset(uint32_t supports_blob = 1, size_t size = 24);
};

class SimDevice final : public apir::DrmDevice {
public:
    explicit SimDevice(SimConfig config = {});
    ~SimDevice() override;
    SimDevice(const SimDevice&) = delete;
    SimDevice& operator=(const SimDevice&) = delete;

    // --- apir::DrmDevice
    int render_nodes(std::vector<apir::DrmNode>& nodes) override;
    int open(const std::string& path) override;
    int close(int fd) override;
    int ioctl(int fd, unsigned long request, void* arg) override;
    int mmap(int fd, uint64_t offset, size_t length, void** addr) override;
    int munmap(void* addr, size_t length) override;
    [[nodiscard]] const std::atomic<bool>* host_alive() const noexcept override;

    /// munmap(2) of any range, as a program may do it (the seam's munmap() above wants a
    /// whole mapping, which is what the transport does): every page of [addr, addr +
    /// length) is unmapped, whatever is mapped there, and each mapping of the device with
    /// no page left is released (its object freed when nothing else holds it). 0, or a
    /// negative errno: -EINVAL for a misaligned addr or a zero length, -ENOENT when no
    /// mapping of the device is in the range (nothing is done), or an injected fault.
    /// `released` (optional) counts the mappings released.
    int munmap_range(void* addr, size_t length, size_t* released = nullptr);
    /// Closes every open file (as close() would: hosts stop, handles go); mappings stay,
    /// with their objects, until they are unmapped.
    void close_all();

    /// The host options and delivery hook (SimConfig::host, SimConfig::deliver) of the
    /// contexts created from now on; existing contexts keep theirs.
    void set_host(apir::HostOptions host,
                  std::function<bool(std::span<const std::byte>)> deliver = {});

    // --- fault injection
    /// The calls of op after the next `after` ones fail with err, `times` times.
    void fail(SimOp op, int err, unsigned after = 0, unsigned times = 1);
    /// Like fail(), for every later call.
    void fail_always(SimOp op, int err, unsigned after = 0) { fail(op, err, after, ~0u); }
    void clear_faults();
    /// The host dies: commands are no longer executed, and host_alive() turns false.
    void stop_host();

    // --- what is alive (the guest's view)
    [[nodiscard]] size_t open_files() const;
    [[nodiscard]] size_t gem_handles() const;
    [[nodiscard]] size_t mappings() const;
    [[nodiscard]] size_t objects() const;
    /// Bytes of the host-visible region in use.
    [[nodiscard]] uint64_t host_visible_used() const;
    [[nodiscard]] bool nothing_alive() const {
        return open_files() == 0 && gem_handles() == 0 && mappings() == 0 && objects() == 0;
    }

    // --- what happened
    [[nodiscard]] uint64_t calls(SimOp op) const;
    /// Submissions that would have produced an out fence (fence fd, syncobj, BOs,
    /// polled ring): the APIR host cannot signal them.
    [[nodiscard]] uint64_t fenced_submits() const;
    /// Commands dropped by SimConfig::deliver, or sent to a context without a host.
    [[nodiscard]] uint64_t dropped_commands() const;
    /// Commands the hosts executed.
    [[nodiscard]] uint64_t executed_commands() const;
    /// munmap calls that matched no mapping of the device.
    [[nodiscard]] uint64_t bad_munmaps() const;
    /// Contexts created (CONTEXT_INIT or implicit) and the capset of the last one.
    [[nodiscard]] uint64_t contexts_created() const;
    [[nodiscard]] uint32_t last_context_capset() const;
    /// Blocks until every host has executed what was submitted to it.
    void drain();

    struct State; // opaque

private:
    std::unique_ptr<State> s_;
};

} // namespace apir
