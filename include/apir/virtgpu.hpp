// VirtgpuTransport: APIR over a virtio-gpu DRM render node, as a guest VM sees it.
//
// Opening finds a virtio_gpu render node (libdrm), checks the kernel parameters the
// transport needs, reads the capset, and creates a context on it (docs/PROTOCOL.md §5).
// Shared memory is a HOST3D blob mapped into the process; a call is one EXECBUFFER
// on ring 0, and the reply is awaited on the reply page with the same wait loop as
// the loopback transport (the remote host cannot wake us, so the wait polls).
//
//     auto t = apir::VirtgpuTransport::open();            // first usable node
//     if (!t) { fmt::print("{}\n", t.error()); return 1; }  // says which step failed and why
//     apir::Session s(std::move(*t));
//     if (auto c = s.connect(); !c) fmt::print("{}\n", c.error());
//
// Every system call goes through a DrmDevice, so tests can put a simulated device
// behind the transport and make any step fail.
//
// Capset precedence (first match wins):
//   1. VirtgpuOptions::capset = apir or venus: that capset, nothing else.
//   2. GGML_REMOTING_USE_APIR_CAPSET present in the environment (any value, as ggml
//      reads it), unless use_environment is false: the APIR capset, nothing else.
//   3. automatic: APIR (10) when the device offers it; otherwise Venus (4, transition
//      mode: command types + 331) when the device offers only that; otherwise APIR.
#pragma once

#include "apir/error.hpp"
#include "apir/export.hpp"
#include "apir/log.hpp"
#include "apir/transport.hpp"

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace apir {

/// A DRM render node of the machine.
struct DrmNode {
    std::string path; ///< e.g. /dev/dri/renderD128
    std::string bus;  ///< where the device sits, e.g. "pci 0000:00:02.0 [1af4:1050]"
};

/// The system calls the DRM transport makes: the seam between it and the kernel.
/// Every function returns 0 (or an fd) on success and a negative errno on failure.
/// system_drm_device() is the machine's; tests implement a simulated one.
///
/// The contract: an ioctl or mmap may fail with -EINTR or -EAGAIN without having done
/// anything; the transport then retries it once with the same arguments (a second
/// such failure is reported). GET_CAPS failing with -EBUSY (the kernel's wait for the
/// host's answer ran out) is asked again until VirtgpuOptions::open_timeout. open,
/// close, munmap and render_nodes are not retried. An implementation need not retry
/// by itself (libdrm's drmIoctl does, which is harmless).
class APIR_EXPORT DrmDevice {
public:
    virtual ~DrmDevice() = default;
    /// The render nodes of the machine.
    virtual int render_nodes(std::vector<DrmNode>& nodes) = 0;
    /// Opens a node read-write and close-on-exec; returns the fd.
    virtual int open(const std::string& path) = 0;
    virtual int close(int fd) = 0;
    virtual int ioctl(int fd, unsigned long request, void* arg) = 0;
    /// Maps length bytes of fd at offset, shared and read-write.
    virtual int mmap(int fd, uint64_t offset, size_t length, void** addr) = 0;
    virtual int munmap(void* addr, size_t length) = 0;
    /// Not a system call: a device that knows whether its host still runs returns a flag
    /// that stays true while it does, so that a wait ends with DISCONNECTED when the host
    /// dies. A simulated device (apir::SimDevice) runs its host in this process and knows;
    /// the kernel's device does not say (the default, null: a wait then ends at its
    /// deadline).
    [[nodiscard]] virtual const std::atomic<bool>* host_alive() const noexcept { return nullptr; }
};

/// The machine's DRM devices, through libdrm (drmGetDevices2, drmIoctl) and mmap(2).
[[nodiscard]] APIR_EXPORT std::shared_ptr<DrmDevice> system_drm_device();

/// Which virtio-gpu capset carries APIR (see the precedence above).
enum class CapsetChoice : uint8_t { automatic, apir, venus };

/// The environment variable ggml's guest reads: present (any value) selects APIR.
inline constexpr const char* capset_env_var = "GGML_REMOTING_USE_APIR_CAPSET";

/// The capset chosen for a device, and why.
struct CapsetDecision {
    uint32_t id = 0;
    std::string_view reason;
};
/// Applies the precedence. offered: the SUPPORTED_CAPSET_IDs mask, when known.
[[nodiscard]] APIR_EXPORT CapsetDecision choose_capset(CapsetChoice choice, bool env_present,
                                                       std::optional<uint64_t> offered);
/// "APIR", "VENUS", "VIRGL2", ... or "capset N".
[[nodiscard]] APIR_EXPORT std::string capset_name(uint32_t id);

/// The GETPARAM ids the transport reads (Linux's VIRTGPU_PARAM_*).
[[nodiscard]] APIR_EXPORT std::string_view virtgpu_param_name(uint64_t id) noexcept;

struct VirtgpuOptions {
    CapsetChoice capset = CapsetChoice::automatic;
    /// Honour GGML_REMOTING_USE_APIR_CAPSET when capset is automatic.
    bool use_environment = true;
    /// Render node to use (e.g. /dev/dri/renderD128); empty: the first usable one.
    std::string node;
    /// Released blobs kept for reuse, so that repeated bulk transfers do not create
    /// a blob per call: at most this many bytes and blobs (0 disables the cache).
    size_t shmem_cache_bytes = size_t{64} << 20;
    size_t shmem_cache_blobs = 16;
    /// How long opening a node keeps asking a host that answers GET_CAPS with EBUSY
    /// (the kernel's 5 s wait for the host's capset ran out).
    std::chrono::nanoseconds open_timeout = std::chrono::seconds(10);
    /// The system-call layer; null: system_drm_device().
    std::shared_ptr<DrmDevice> device;
    Logger logger;
};

/// One GETPARAM answer.
struct VirtgpuParamValue {
    uint64_t id = 0;
    std::string_view name;
    uint64_t value = 0;
    int error = 0; ///< errno of GETPARAM (EINVAL: this kernel does not know the id)
};

/// What GET_CAPS returned for the capset chosen on a node.
struct VirtgpuCapsetReport {
    uint32_t id = 0;
    std::string_view reason; ///< why this capset (see the precedence)
    bool queried = false;    ///< GET_CAPS was asked (the device offers the capset)
    int error = 0;           ///< errno of GET_CAPS, or 0
    uint32_t apir_version = 0;
    uint32_t supports_blob_resources = 0;
};

/// What discovery learnt about one render node and, if it was skipped, why.
struct APIR_EXPORT VirtgpuNodeReport {
    DrmNode node;
    std::string driver; ///< DRM driver name; empty when the node could not be asked
    int driver_major = 0, driver_minor = 0, driver_patch = 0;
    std::vector<VirtgpuParamValue> params;
    /// Names of the parameters the transport needs that the device lacks.
    std::vector<std::string_view> missing;
    std::optional<VirtgpuCapsetReport> capset;
    /// Why the node was skipped; empty when it is usable.
    std::optional<Error> error;

    [[nodiscard]] bool usable() const noexcept { return !error; }
    [[nodiscard]] bool is_virtio_gpu() const noexcept {
        return driver == "virtio_gpu" && driver_major == 0;
    }
    /// A parameter's value, if GETPARAM answered it.
    [[nodiscard]] std::optional<uint64_t> param(uint64_t id) const noexcept;
    /// The capset ids the device offers (SUPPORTED_CAPSET_IDs), if known.
    [[nodiscard]] std::vector<uint32_t> offered_capsets() const;
};

struct APIR_EXPORT VirtgpuDiscovery {
    std::vector<VirtgpuNodeReport> nodes;
    /// Why no node is usable (enumeration failed, no virtio-gpu node, or the reason
    /// of the virtio-gpu node that got furthest); empty when one is usable.
    std::optional<Error> error;
    [[nodiscard]] const VirtgpuNodeReport* usable() const noexcept;
};

/// Inspects the render nodes without creating anything: driver, parameters, capset.
/// Each node is opened, asked and closed; a failing node never stops the others.
[[nodiscard]] APIR_EXPORT VirtgpuDiscovery discover_virtgpu(const VirtgpuOptions& options = {});

/// Counters of the shared-memory blobs of one transport.
struct VirtgpuStats {
    uint64_t blobs_created = 0;   ///< RESOURCE_CREATE_BLOB that succeeded
    uint64_t blobs_reused = 0;    ///< create_shmem answered from the cache
    uint64_t blobs_destroyed = 0; ///< unmapped and GEM_CLOSEd
    uint64_t cache_evictions = 0; ///< destroyed to keep the cache within its bounds
    size_t live_blobs = 0;        ///< handed out, not yet released
    size_t live_bytes = 0;
    size_t cached_blobs = 0; ///< released, kept for reuse
    size_t cached_bytes = 0;
    /// Released while a command the host may not have executed yet could name them
    /// (a call timed out): kept, not reused, until a later reply shows the host is
    /// past those commands; at most as many as the cache (beyond: destroyed).
    size_t quarantined_blobs = 0;
    size_t quarantined_bytes = 0;
    uint64_t submits = 0; ///< EXECBUFFER that succeeded
};

/// A moved-from VirtgpuTransport fails every call with DISCONNECTED and is named
/// "moved-from" (device() must not be called on it).
class APIR_EXPORT VirtgpuTransport final {
public:
    /// Finds a usable virtio-gpu node and creates a context on it. The error names the
    /// step and system call that failed, its errno, and what to check.
    [[nodiscard]] static Expected<VirtgpuTransport> open(VirtgpuOptions options = {});

    VirtgpuTransport(VirtgpuTransport&&) noexcept;
    VirtgpuTransport& operator=(VirtgpuTransport&&) noexcept;
    ~VirtgpuTransport(); // destroys every cached blob and closes the node

    /// A mappable HOST3D blob of at least size bytes (rounded to 16 KiB), from the cache
    /// when a released one fits (its contents are then unspecified).
    [[nodiscard]] Expected<Shmem> create_shmem(size_t size);
    /// EXECBUFFER on ring 0: no buffer objects, no fences (the kernel copies the bytes).
    /// It does not wait for the host, so the deadline is not needed.
    [[nodiscard]] Expected<void> submit(std::span<const std::byte> command, uint32_t reply_res_id,
                                        Deadline deadline);
    /// Polls the reply page's notification word (apir::wait_for_reply, no wake-ups).
    [[nodiscard]] Expected<uint32_t> wait_reply(const Shmem& page, const WaitPolicy& policy,
                                                Deadline deadline);
    /// 0 with the APIR capset, 331 in Venus transition mode.
    [[nodiscard]] int32_t command_type_offset() const noexcept;
    /// "virtgpu" or "virtgpu-venus".
    [[nodiscard]] std::string_view name() const noexcept;

    /// The node in use, as discovery saw it (path, driver, parameters, capset).
    [[nodiscard]] const VirtgpuNodeReport& device() const noexcept;
    [[nodiscard]] uint32_t capset_id() const noexcept;
    [[nodiscard]] VirtgpuStats stats() const noexcept;
    /// Destroys the cached blobs now.
    void trim_shmem_cache() noexcept;

    struct Impl; // opaque

private:
    explicit VirtgpuTransport(std::unique_ptr<Impl> impl) noexcept;
    std::unique_ptr<Impl> impl_;
};

static_assert(Transport<VirtgpuTransport>);

} // namespace apir
