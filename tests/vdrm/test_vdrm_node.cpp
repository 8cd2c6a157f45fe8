// The virtual render node as libdrm and the C library see it: run with libapir-vdrm.so
// preloaded (meson test vdrm-node); skips (77) without it.
// Its own main (it skips before Catch2 runs): Catch2 v2 or v3, as tests/catch_main.cpp.
#if __has_include(<catch2/catch_all.hpp>)
#include <catch2/catch_all.hpp>
#else
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>
#endif

#include <apir/vdrm.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include <dlfcn.h>
#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>
#include <xf86drm.h>

namespace {

using CountsFn = int (*)(struct apir_vdrm_counts*);

struct apir_vdrm_counts counts() {
    auto fn = reinterpret_cast<CountsFn>(dlsym(RTLD_DEFAULT, "apir_vdrm_counts"));
    REQUIRE(fn);
    struct apir_vdrm_counts c {};
    REQUIRE(fn(&c) == 0);
    return c;
}

const char* node = "/dev/dri/renderD128";

} // namespace

int main(int argc, char** argv) {
    if (!dlsym(RTLD_DEFAULT, "apir_vdrm_counts")) {
        std::puts("skip: libapir-vdrm.so is not preloaded");
        return 77;
    }
    return Catch::Session().run(argc, argv);
}

TEST_CASE("drmGetDevices2 lists the node as a virtio-gpu PCI device", "[vdrm]") {
    drmDevicePtr devs[8] = {};
    const int n = drmGetDevices2(0, devs, 8);
    REQUIRE(n >= 1);
    bool found = false;
    for (int i = 0; i < n; ++i) {
        if (!(devs[i]->available_nodes & (1 << DRM_NODE_RENDER))) continue;
        if (std::strcmp(devs[i]->nodes[DRM_NODE_RENDER], node) != 0) continue;
        found = true;
        CHECK(devs[i]->bustype == DRM_BUS_PCI);
        CHECK(devs[i]->businfo.pci->bus == 0);
        CHECK(devs[i]->businfo.pci->dev == 2);
        CHECK(devs[i]->deviceinfo.pci->vendor_id == 0x1af4);
        CHECK(devs[i]->deviceinfo.pci->device_id == 0x1050);
    }
    drmFreeDevices(devs, n);
    CHECK(found);
}

TEST_CASE("the node's descriptor is a character device libdrm recognizes", "[vdrm]") {
    struct stat st {};
    REQUIRE(stat(node, &st) == 0);
    CHECK(S_ISCHR(st.st_mode));
    CHECK(major(st.st_rdev) == 226);
    CHECK(minor(st.st_rdev) == 128);
    CHECK(access(node, R_OK | W_OK) == 0);

    const int fd = open(node, O_RDWR | O_CLOEXEC);
    REQUIRE(fd >= 0);
    struct stat fst {};
    REQUIRE(fstat(fd, &fst) == 0);
    CHECK(fst.st_rdev == st.st_rdev);
    CHECK((fcntl(fd, F_GETFD) & FD_CLOEXEC) != 0); // a real descriptor, with its flags
    drmDevicePtr d = nullptr;
    REQUIRE(drmGetDevice2(fd, 0, &d) == 0);
    CHECK(std::strcmp(d->nodes[DRM_NODE_RENDER], node) == 0);
    drmFreeDevice(&d);
    char* name = drmGetRenderDeviceNameFromFd(fd);
    REQUIRE(name);
    CHECK(std::string(name) == node);
    std::free(name);
    drmVersionPtr v = drmGetVersion(fd);
    REQUIRE(v);
    CHECK(std::string(v->name) == "virtio_gpu");
    CHECK(v->version_major == 0);
    CHECK(v->version_minor == 1);
    drmFreeVersion(v);
    CHECK(drmGetNodeTypeFromFd(fd) == DRM_NODE_RENDER);
    CHECK(close(fd) == 0);
    CHECK(counts().open_files == 0);
}

TEST_CASE("a duplicated descriptor is the same DRM file; the last close closes it", "[vdrm]") {
    const int fd = open(node, O_RDWR | O_CLOEXEC);
    REQUIRE(fd >= 0);
    const int d1 = dup(fd);
    const int d2 = fcntl(fd, F_DUPFD_CLOEXEC, 100);
    REQUIRE(d1 >= 0);
    REQUIRE(d2 >= 100);
    const int d3 = open("/dev/null", O_RDONLY);
    REQUIRE(d3 >= 0);
    REQUIRE(dup2(fd, d3) == d3); // /dev/null replaced by the node
    CHECK(counts().open_files == 1);
    for (int d : {d1, d2, d3}) {
        drmVersionPtr v = drmGetVersion(d);
        REQUIRE(v);
        CHECK(std::string(v->name) == "virtio_gpu");
        drmFreeVersion(v);
    }
    const int other = open("/dev/null", O_RDONLY);
    REQUIRE(other >= 0);
    REQUIRE(dup2(other, d1) == d1); // the node replaced by /dev/null
    CHECK(ioctl(d1, DRM_IOCTL_VERSION, nullptr) < 0);
    CHECK(errno == ENOTTY);
    CHECK(close(fd) == 0);
    CHECK(close(d2) == 0);
    CHECK(counts().open_files == 1); // d3 still holds it
    CHECK(close(d3) == 0);
    CHECK(counts().open_files == 0);
    CHECK(close(d1) == 0);
    CHECK(close(other) == 0);
}

TEST_CASE("other files, descriptors and mappings pass through", "[vdrm]") {
    struct stat st {};
    REQUIRE(stat("/dev/null", &st) == 0);
    CHECK(S_ISCHR(st.st_mode));
    CHECK(major(st.st_rdev) == 1);
    errno = 0;
    CHECK(open("/dev/dri/renderD200", O_RDWR) < 0); // not the node: the machine answers
    CHECK(errno == ENOENT);
    const int fd = open("/dev/null", O_RDWR);
    REQUIRE(fd >= 0);
    CHECK(ioctl(fd, DRM_IOCTL_VERSION, nullptr) < 0); // the kernel's answer for /dev/null
    CHECK(errno == ENOTTY);
    CHECK(close(fd) == 0);
    void* p = mmap(nullptr, 1 << 16, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    REQUIRE(p != MAP_FAILED);
    std::memset(p, 1, 1 << 16);
    CHECK(munmap(p, 1 << 16) == 0);
    CHECK(close(-1) < 0);
    CHECK(errno == EBADF);
}

TEST_CASE("several descriptors, from several threads, and nothing stays alive", "[vdrm]") {
    std::atomic<int> failures{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t)
        threads.emplace_back([&] {
            for (int i = 0; i < 50; ++i) {
                const int a = open(node, O_RDWR | O_CLOEXEC);
                const int b = open(node, O_RDWR | O_CLOEXEC);
                if (a < 0 || b < 0 || a == b) ++failures;
                drmVersionPtr v = drmGetVersion(b);
                if (!v || std::strcmp(v->name, "virtio_gpu") != 0) ++failures;
                if (v) drmFreeVersion(v);
                if (close(a) != 0 || close(b) != 0) ++failures;
            }
        });
    for (auto& t : threads)
        t.join();
    CHECK(failures == 0);
    const auto c = counts();
    CHECK(c.open_files == 0);
    CHECK(c.gem_handles == 0);
    CHECK(c.mappings == 0);
    CHECK(c.objects == 0);
}
