// libapir-vdrm.so: the private tree that stands in for the kernel's sysfs and /dev/dri
// (a virtio-gpu PCI function, its virtio device and DRM minor, and /dev/dri's names),
// and the paths redirected to it.
#include "node_state.hpp"

#include "apir/internal/unique_handle.hpp"

#include <cstring>

#include <dirent.h>
#include <fcntl.h>
#include <unistd.h>

namespace apir::vdrm {
namespace {

bool write_file(Vdrm& v, const std::string& rel, const std::string& text) {
    const std::string p = v.root + rel;
    apir::detail::PosixFd fd(
        APIR_NEXT(open)(p.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0444));
    if (!fd) return false;
    const bool ok = ::write(fd.get(), text.data(), text.size()) == ssize_t(text.size());
    fd.reset();
    v.made.push_back(p);
    return ok;
}
bool make_dir(Vdrm& v, const std::string& rel) {
    const std::string p = v.root + rel;
    if (::mkdir(p.c_str(), 0755) != 0) return false;
    v.made.push_back(p);
    return true;
}
bool make_link(Vdrm& v, const std::string& rel, const std::string& target) {
    const std::string p = v.root + rel;
    if (::symlink(target.c_str(), p.c_str()) != 0) return false;
    v.made.push_back(p);
    return true;
}

// The PCI function of a virtio-gpu device (1af4:1050), as Linux's sysfs shows it.
bool make_pci_function(Vdrm& v, const std::string& pci) {
    const auto& d = v.settings.device;
    bool ok =
        make_dir(v, pci) && make_link(v, pci + "/subsystem", "../../../bus/pci") &&
        write_file(v, pci + "/uevent",
                   "DRIVER=virtio-pci\nPCI_CLASS=30000\nPCI_ID=1AF4:1050\n"
                   "PCI_SUBSYS_ID=1AF4:1100\nPCI_SLOT_NAME=" +
                       d.pci_slot +
                       "\nMODALIAS=pci:v00001AF4d00001050sv00001AF4sd00001100bc03sc00i00\n") &&
        write_file(v, pci + "/vendor", "0x1af4\n") && write_file(v, pci + "/device", "0x1050\n") &&
        write_file(v, pci + "/subsystem_vendor", "0x1af4\n") &&
        write_file(v, pci + "/subsystem_device", "0x1100\n") &&
        write_file(v, pci + "/revision", "0x01\n") && write_file(v, pci + "/class", "0x030000\n");
    std::string config(64, '\0');
    const unsigned char cfg[] = {0xf4, 0x1a, 0x50, 0x10};
    std::memcpy(config.data(), cfg, sizeof cfg);
    config[8] = 1;                              // revision
    config[11] = 3;                             // display controller
    config[44] = char(0xf4), config[45] = 0x1a; // subsystem vendor
    config[46] = 0x00, config[47] = 0x11;       // subsystem device
    return ok && write_file(v, pci + "/config", config);
}

// The virtio device and its DRM minor, and the links sysfs has to the minor.
bool make_minor(Vdrm& v, const std::string& virtio, const std::string& name) {
    const std::string minor = std::to_string(v.settings.device.minor);
    const std::string minor_dir = virtio + "/drm/" + name;
    const std::string target =
        "../../devices/pci0000:00/" + v.settings.device.pci_slot + "/virtio0/drm/" + name;
    return make_dir(v, virtio) && make_dir(v, virtio + "/drm") && make_dir(v, minor_dir) &&
           make_link(v, virtio + "/subsystem", "../../../../bus/virtio") &&
           write_file(v, virtio + "/uevent",
                      "DRIVER=virtio_gpu\nMODALIAS=virtio:d00000010v00001AF4\n") &&
           make_link(v, minor_dir + "/subsystem", "../../../../../../class/drm") &&
           make_link(v, minor_dir + "/device", "../../../virtio0") &&
           write_file(v, minor_dir + "/dev", "226:" + minor + "\n") &&
           write_file(v, minor_dir + "/uevent",
                      "MAJOR=226\nMINOR=" + minor + "\nDEVNAME=dri/" + name +
                          "\nDEVTYPE=drm_minor\n") &&
           make_link(v, "/sys/dev/char/226:" + minor, target) &&
           make_link(v, "/sys/class/drm/" + name, target);
}

// /dev/dri lists the machine's own entries beside the virtual node; only the names
// are here (their paths are not redirected: they reach the real nodes).
bool make_dev_dri(Vdrm& v, const std::string& name) {
    bool ok = write_file(v, "/dev/dri/" + name, "");
    if (DIR* real = APIR_NEXT(opendir)("/dev/dri")) {
        while (const dirent* e = ::readdir(real)) {
            const std::string n = e->d_name;
            if (n == "." || n == ".." || n == name) continue;
            ok = ok && write_file(v, "/dev/dri/" + n, "");
        }
        ::closedir(real);
    }
    return ok;
}

// Whether path may concern the virtual node (cheap; no initialization).
bool may_concern(const char* path) noexcept {
    return path && path[0] == '/' &&
           (std::strncmp(path, "/dev/dri", 8) == 0 ||
            std::strncmp(path, "/sys/dev/char/", 14) == 0 ||
            std::strncmp(path, "/sys/class/drm", 14) == 0);
}

bool under(const char* path, const std::string& prefix) noexcept {
    const size_t n = prefix.size();
    return std::strncmp(path, prefix.c_str(), n) == 0 && (path[n] == '\0' || path[n] == '/');
}

} // namespace

bool build_tree(Vdrm& v) {
    const std::string name = "renderD" + std::to_string(v.settings.device.minor);
    const std::string pci = "/sys/devices/pci0000:00/" + v.settings.device.pci_slot;
    bool ok = true;
    for (const char* dir :
         {"/dev", "/dev/dri", "/sys", "/sys/bus", "/sys/bus/pci", "/sys/bus/virtio", "/sys/class",
          "/sys/class/drm", "/sys/dev", "/sys/dev/char", "/sys/devices", "/sys/devices/pci0000:00"})
        ok = ok && make_dir(v, dir);
    return ok && make_pci_function(v, pci) && make_minor(v, pci + "/virtio0", name) &&
           make_dev_dri(v, name);
}

void remove_tree(Vdrm& v) {
    for (auto it = v.made.rbegin(); it != v.made.rend(); ++it)
        if (::unlink(it->c_str()) != 0) ::rmdir(it->c_str());
    ::rmdir(v.root.c_str());
    v.made.clear();
}

bool is_node(const char* path) noexcept {
    return may_concern(path) && ready() && g_vdrm->node_path == path;
}

// The path to use instead of path: the private tree's, or path itself.
const char* redirect(const char* path, std::string& buf) noexcept {
    if (!may_concern(path) || !ready()) return path;
    const Vdrm& v = *g_vdrm;
    if (std::strcmp(path, "/dev/dri") == 0 || std::strcmp(path, "/dev/dri/") == 0 ||
        under(path, v.sys_char) || under(path, v.sys_class)) {
        buf = v.root + path;
        return buf.c_str();
    }
    return path;
}

} // namespace apir::vdrm
