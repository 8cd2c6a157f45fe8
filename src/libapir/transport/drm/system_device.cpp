// The machine's DRM devices: libdrm for enumeration and ioctls, mmap(2) for blobs.
#include "apir/virtgpu.hpp"

#include <cerrno>
#include <vector>

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>
#include <xf86drm.h>

namespace apir {
namespace {

std::string bus_of(const drmDevice& d) {
    switch (d.bustype) {
    case DRM_BUS_PCI:
        if (!d.businfo.pci || !d.deviceinfo.pci) return "pci";
        return fmt::format("pci {:04x}:{:02x}:{:02x}.{} [{:04x}:{:04x}]", d.businfo.pci->domain,
                           d.businfo.pci->bus, d.businfo.pci->dev, d.businfo.pci->func,
                           d.deviceinfo.pci->vendor_id, d.deviceinfo.pci->device_id);
    case DRM_BUS_PLATFORM: // virtio-mmio devices show up here
        return d.businfo.platform ? fmt::format("platform {}", d.businfo.platform->fullname)
                                  : "platform";
    case DRM_BUS_USB:
        return "usb";
    case DRM_BUS_HOST1X:
        return "host1x";
    default:
        return "unknown bus";
    }
}

class SystemDrmDevice final : public DrmDevice {
public:
    int render_nodes(std::vector<DrmNode>& nodes) override {
        const int n = drmGetDevices2(0, nullptr, 0);
        if (n <= 0) return n; // -ENOENT without /dev/dri
        std::vector<drmDevicePtr> devs(static_cast<size_t>(n));
        const int got = drmGetDevices2(0, devs.data(), n);
        if (got < 0) return got;
        for (int i = 0; i < got; ++i) {
            const drmDevice& d = *devs[static_cast<size_t>(i)];
            if (d.available_nodes & (1 << DRM_NODE_RENDER))
                nodes.push_back({d.nodes[DRM_NODE_RENDER], bus_of(d)});
        }
        drmFreeDevices(devs.data(), got);
        return 0;
    }
    int open(const std::string& path) override {
        int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
        return fd < 0 ? -errno : fd;
    }
    int close(int fd) override { return ::close(fd) < 0 ? -errno : 0; }
    int ioctl(int fd, unsigned long request, void* arg) override {
        // drmIoctl restarts on EINTR and EAGAIN.
        return drmIoctl(fd, request, arg) < 0 ? -errno : 0;
    }
    int mmap(int fd, uint64_t offset, size_t length, void** addr) override {
        void* p = ::mmap(nullptr, length, PROT_READ | PROT_WRITE, MAP_SHARED, fd,
                         static_cast<off_t>(offset));
        if (p == MAP_FAILED) return -errno;
        *addr = p;
        return 0;
    }
    int munmap(void* addr, size_t length) override {
        return ::munmap(addr, length) < 0 ? -errno : 0;
    }
};

} // namespace

std::shared_ptr<DrmDevice> system_drm_device() {
    return std::make_shared<SystemDrmDevice>();
}

} // namespace apir
