// The virtual render node as libdrm and the C library see it: run with libapir-vdrm.so
// preloaded (meson test vdrm-node); skips (77) without it.
// Its own main (it skips before Catch2 runs): Catch2 v2 or v3, as tests/catch_main.cpp.
#if __has_include(<catch2/catch_all.hpp>)
#include <catch2/catch_all.hpp>
#else
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>
#endif

#include <apir/internal/virtgpu_uapi.hpp>
#include <apir/vdrm/vdrm.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include <dirent.h>
#include <dlfcn.h>
#include <fcntl.h>
#include <spawn.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>
#include <xf86drm.h>

extern char** environ;

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
namespace uapi = apir::uapi;
using Clock = std::chrono::steady_clock;

// --- Raw virtio-gpu calls, as a guest frontend makes them.

int context_init_apir(int fd) {
    uapi::context_set_param params[2] = {{uapi::context_param_capset_id, 10},
                                         {uapi::context_param_num_rings, 1}};
    uapi::context_init ci{};
    ci.num_params = 2;
    ci.ctx_set_params = reinterpret_cast<uintptr_t>(params);
    return ioctl(fd, uapi::ioctl_context_init, &ci);
}

struct Blob {
    uint32_t handle = 0, res = 0;
    void* p = MAP_FAILED;
    size_t size = 0;
};

// A host-visible blob of size bytes, mapped.
bool make_blob(int fd, size_t size, Blob& b) {
    uapi::resource_create_blob c{};
    c.blob_mem = uapi::blob_mem_host3d;
    c.blob_flags = uapi::blob_flag_use_mappable;
    c.size = size;
    if (ioctl(fd, uapi::ioctl_resource_create_blob, &c) != 0) return false;
    b.handle = c.bo_handle;
    b.res = c.res_handle;
    b.size = size;
    uapi::map m{};
    m.handle = b.handle;
    if (ioctl(fd, uapi::ioctl_map, &m) != 0) return false;
    b.p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, off_t(m.offset));
    return b.p != MAP_FAILED;
}

int gem_close(int fd, uint32_t handle) {
    uapi::gem_close g{};
    g.handle = handle;
    return ioctl(fd, uapi::ioctl_gem_close, &g);
}

// The file mapped at addr as /proc/self/maps names it (device and inode), or "" when
// nothing, or anonymous memory, is mapped there.
std::string file_mapped_at(const void* addr) {
    std::string found;
    FILE* f = std::fopen("/proc/self/maps", "r");
    if (!f) return found;
    const auto a = reinterpret_cast<uintptr_t>(addr);
    char* line = nullptr;
    size_t cap = 0;
    while (getline(&line, &cap, f) > 0) {
        unsigned long lo = 0, hi = 0, inode = 0;
        char dev[32] = {};
        if (std::sscanf(line, "%lx-%lx %*s %*s %31s %lu", &lo, &hi, dev, &inode) != 4) continue;
        if (a < lo || a >= hi) continue;
        if (inode != 0) found = std::string(dev) + " " + std::to_string(inode);
        break;
    }
    std::free(line);
    std::fclose(f);
    return found;
}

// Sends an APIR command (words) whose reply goes to page; 0 or -1.
int submit(int fd, const Blob& page, std::vector<uint32_t> words) {
    std::atomic_ref<uint32_t>(*static_cast<uint32_t*>(page.p)).store(0);
    uapi::execbuffer e{};
    e.size = uint32_t(words.size() * 4);
    e.command = reinterpret_cast<uintptr_t>(words.data());
    return ioctl(fd, uapi::ioctl_execbuffer, &e);
}

// The reply's code, or -1 when none came within ms.
int64_t wait_reply(const Blob& page, int ms) {
    const auto end = Clock::now() + std::chrono::milliseconds(ms);
    std::atomic_ref<uint32_t> word(*static_cast<uint32_t*>(page.p));
    while (Clock::now() < end) {
        if (const uint32_t w = word.load()) return int64_t(w) - 1;
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    return -1;
}

// --- Child programs (this binary run again with --child MODE, the node preloaded).

// The host gets stuck in a backend call (the demo backend's sleep, 49 days); the call
// times out, and main returns with the node's file still open: the exit handler must
// not wait for the host forever.
int child_stuck_host() {
    const int fd = open(node, O_RDWR | O_CLOEXEC);
    Blob page;
    if (fd < 0 || context_init_apir(fd) != 0 || !make_blob(fd, 16384, page)) return 10;
    if (submit(fd, page, {0, 0, page.res, 0, 2}) != 0 || wait_reply(page, 10000) != 0xab1e)
        return 11; // HANDSHAKE
    if (submit(fd, page, {1, 0, page.res}) != 0 || wait_reply(page, 10000) != 0)
        return 12; // LOADLIBRARY (the demo backend)
    if (submit(fd, page, {2, 4, page.res, 0xffffffffu}) != 0) return 13; // FORWARD sleep
    if (wait_reply(page, 200) != -1) return 14;                          // it times out
    std::puts("the host is stuck; main returns");
    return 0;
}

// Threads inside ioctls on the node while main returns.
int child_exit_in_ioctl() {
    std::atomic<int> started{0};
    for (int t = 0; t < 4; ++t)
        std::thread([&started, t] {
            const int fd = open(node, O_RDWR | O_CLOEXEC);
            if (t == 0 && fd >= 0) (void)context_init_apir(fd);
            started.fetch_add(1);
            for (;;) {
                drm_version v{};
                (void)ioctl(fd, DRM_IOCTL_VERSION, &v);
                uint64_t value = 0;
                uapi::getparam p{};
                p.param = 1;
                p.value = reinterpret_cast<uintptr_t>(&value);
                (void)ioctl(fd, uapi::ioctl_getparam, &p);
                uapi::resource_create_blob c{};
                c.blob_mem = uapi::blob_mem_host3d;
                c.blob_flags = uapi::blob_flag_use_mappable;
                c.size = 4096;
                if (ioctl(fd, uapi::ioctl_resource_create_blob, &c) == 0)
                    (void)gem_close(fd, c.bo_handle);
                const uint32_t cmd[3] = {0, 0, 999};
                uapi::execbuffer e{};
                e.size = sizeof cmd;
                e.command = reinterpret_cast<uintptr_t>(cmd);
                (void)ioctl(fd, uapi::ioctl_execbuffer, &e);
            }
        }).detach();
    while (started.load() < 4)
        std::this_thread::yield();
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    return 0; // exit handlers run while the threads call on
}

// Uses the node, then execs this binary again, which uses the node and exits.
int child_exec(const char* self) {
    const int fd = open(node, O_RDWR | O_CLOEXEC);
    if (fd < 0) return 20;
    drm_version v{};
    if (ioctl(fd, DRM_IOCTL_VERSION, &v) != 0) return 21;
    execl(self, self, "--child", "use-node", static_cast<char*>(nullptr));
    return 22;
}

int child_use_node() {
    const int fd = open(node, O_RDWR | O_CLOEXEC);
    if (fd < 0) return 30;
    drm_version v{};
    if (ioctl(fd, DRM_IOCTL_VERSION, &v) != 0) return 31;
    return close(fd) == 0 ? 0 : 32;
}

int run_child(const std::string& mode, const char* self) {
    if (mode == "stuck-host") return child_stuck_host();
    if (mode == "exit-in-ioctl") return child_exit_in_ioctl();
    if (mode == "exec") return child_exec(self);
    if (mode == "use-node") return child_use_node();
    return 99;
}

std::string g_self; // this binary

struct Child {
    int status = -1; // waitpid's status; -1 when it was killed for running too long
    double seconds = 0;
    std::string err; // its stderr
    pid_t pid = 0;
};

// Runs this binary with --child mode and the environment changed by env ("K=V"), for at
// most limit_s seconds (then SIGKILL).
Child spawn_child(const std::string& mode, std::vector<std::string> env, double limit_s) {
    std::vector<std::string> vars;
    for (char** e = environ; *e; ++e) {
        const std::string v = *e;
        bool replaced = false;
        for (const auto& n : env)
            replaced = replaced || v.compare(0, n.find('=') + 1, n, 0, n.find('=') + 1) == 0;
        if (!replaced) vars.push_back(v);
    }
    vars.insert(vars.end(), env.begin(), env.end());
    std::vector<char*> envp;
    for (auto& v : vars)
        envp.push_back(v.data());
    envp.push_back(nullptr);
    std::string m = mode;
    std::string flag = "--child";
    char* argv[] = {g_self.data(), flag.data(), m.data(), nullptr};
    int p[2];
    REQUIRE(pipe2(p, O_CLOEXEC) == 0);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, p[1], 2);
    Child c;
    const auto t0 = Clock::now();
    REQUIRE(posix_spawn(&c.pid, g_self.c_str(), &fa, nullptr, argv, envp.data()) == 0);
    posix_spawn_file_actions_destroy(&fa);
    close(p[1]);
    fcntl(p[0], F_SETFL, O_NONBLOCK);
    char buf[4096];
    for (;;) {
        ssize_t n;
        while ((n = read(p[0], buf, sizeof buf)) > 0)
            c.err.append(buf, size_t(n));
        int st = 0;
        if (waitpid(c.pid, &st, WNOHANG) == c.pid) {
            c.status = st;
            break;
        }
        if (std::chrono::duration<double>(Clock::now() - t0).count() > limit_s) {
            kill(c.pid, SIGKILL);
            waitpid(c.pid, &st, 0);
            break;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    c.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    ssize_t n;
    while ((n = read(p[0], buf, sizeof buf)) > 0)
        c.err.append(buf, size_t(n));
    close(p[0]);
    return c;
}

// A private TMPDIR for a child, removed with what is left in it.
struct TempDir {
    std::string path;
    TempDir() {
        std::string t = std::string(std::getenv("TMPDIR") ? std::getenv("TMPDIR") : "/tmp") +
                        "/apir-vdrm-test-XXXXXX";
        REQUIRE(mkdtemp(t.data()));
        path = t;
    }
    ~TempDir() { (void)!std::system(("rm -rf '" + path + "'").c_str()); }
    std::vector<std::string> entries() const {
        std::vector<std::string> out;
        if (DIR* d = opendir(path.c_str())) {
            while (const dirent* e = readdir(d))
                if (e->d_name[0] != '.') out.emplace_back(e->d_name);
            closedir(d);
        }
        return out;
    }
};

} // namespace

int main(int argc, char** argv) {
    if (!dlsym(RTLD_DEFAULT, "apir_vdrm_counts")) {
        std::puts("skip: libapir-vdrm.so is not preloaded");
        return 77;
    }
    if (argc >= 3 && std::strcmp(argv[1], "--child") == 0) return run_child(argv[2], argv[0]);
    char self[4096];
    const ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0) return 1;
    g_self.assign(self, size_t(n));
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

TEST_CASE("a host stuck in a backend call does not keep the program from exiting", "[vdrm]") {
#ifndef APIR_DEMO_BACKEND_PATH
    SKIP("no demo backend in this build");
#else
    TempDir tmp;
    const Child c = spawn_child(
        "stuck-host", {"APIR_VDRM_BACKEND=" APIR_DEMO_BACKEND_PATH, "TMPDIR=" + tmp.path}, 60);
    INFO(c.err);
    CHECK(c.status != -1); // not killed: it exited by itself
    REQUIRE(WIFEXITED(c.status));
    CHECK(WEXITSTATUS(c.status) == 0);
    // The exit handler waits the device's grace (2 s) for the host, then abandons it.
    CHECK(c.seconds < 30);
    CHECK(c.err.find("abandoned") != std::string::npos);
    CHECK(tmp.entries().empty()); // and the tree went
#endif
}

TEST_CASE("main returning while threads are inside ioctls exits cleanly", "[vdrm]") {
    // Under ASan a use of freed memory ends the child with a report and exit code 1.
    for (int i = 0; i < 8; ++i) {
        TempDir tmp;
        const Child c = spawn_child("exit-in-ioctl", {"TMPDIR=" + tmp.path}, 60);
        INFO("run " << i << ": " << c.err);
        REQUIRE(c.status != -1);
        REQUIRE(WIFEXITED(c.status));
        REQUIRE(WEXITSTATUS(c.status) == 0);
        CHECK(c.err.find("AddressSanitizer") == std::string::npos);
        CHECK(tmp.entries().empty());
    }
}

TEST_CASE("exec leaves no private tree behind", "[vdrm]") {
    TempDir tmp;
    const Child c = spawn_child("exec", {"TMPDIR=" + tmp.path}, 60);
    INFO(c.err);
    REQUIRE(c.status != -1);
    REQUIRE(WIFEXITED(c.status));
    CHECK(WEXITSTATUS(c.status) == 0);
    // The first image's tree (made before the exec, which runs no exit handler) is
    // removed by the second image's node; the second's by its exit handler.
    CHECK(tmp.entries().empty());
}

TEST_CASE("fork: the child's node is gone (ENODEV), its exit leaves the parent's node alone",
          "[vdrm]") {
    const int fd = open(node, O_RDWR | O_CLOEXEC);
    REQUIRE(fd >= 0);
    REQUIRE(context_init_apir(fd) == 0); // a context, with its host thread
    int hung = 0, failed = 0;
    for (int i = 0; i < 20; ++i) {
        const pid_t pid = fork();
        REQUIRE(pid >= 0);
        if (pid == 0) {
            drm_version v{};
            errno = 0;
            const bool enodev = ioctl(fd, DRM_IOCTL_VERSION, &v) == -1 && errno == ENODEV;
            void* p = mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
            const bool no_map = p == MAP_FAILED && errno == ENODEV;
            const bool closed = close(fd) == 0;
            std::exit(enodev && no_map && closed ? 0 : 1); // exit handlers run
        }
        int st = 0;
        const auto end = Clock::now() + std::chrono::seconds(10);
        while (waitpid(pid, &st, WNOHANG) != pid) {
            if (Clock::now() > end) {
                ++hung;
                kill(pid, SIGKILL);
                waitpid(pid, &st, 0);
                break;
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(2));
        }
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) ++failed;
        if (hung >= 3) break; // enough to know
    }
    CHECK(hung == 0);
    CHECK(failed == 0);
    // The parent's node and tree are intact.
    struct stat st {};
    CHECK(stat(node, &st) == 0);
    drmDevicePtr devs[8] = {};
    const int n = drmGetDevices2(0, devs, 8);
    bool found = false;
    for (int i = 0; i < n; ++i)
        found = found || ((devs[i]->available_nodes & (1 << DRM_NODE_RENDER)) &&
                          std::strcmp(devs[i]->nodes[DRM_NODE_RENDER], node) == 0);
    if (n > 0) drmFreeDevices(devs, n);
    CHECK(found);
    drmVersionPtr v = drmGetVersion(fd);
    REQUIRE(v);
    CHECK(std::string(v->name) == "virtio_gpu");
    drmFreeVersion(v);
    CHECK(close(fd) == 0);
    CHECK(counts().open_files == 0);
}

TEST_CASE("bad user pointers in virtio-gpu ioctls fail with EFAULT", "[vdrm]") {
    const int fd = open(node, O_RDWR | O_CLOEXEC);
    REQUIRE(fd >= 0);
    // An unreadable page, a read-only page, and an address nothing maps.
    void* none = mmap(nullptr, 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    void* ro = mmap(nullptr, 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    REQUIRE(none != MAP_FAILED);
    REQUIRE(ro != MAP_FAILED);
    const auto bad = reinterpret_cast<uintptr_t>(none);
    const auto readonly = reinterpret_cast<uintptr_t>(ro);
    auto efault = [&](unsigned long req, void* arg) {
        errno = 0;
        const int r = ioctl(fd, req, arg);
        return r == -1 && errno == EFAULT;
    };
    SECTION("the ioctl's own struct") {
        CHECK(efault(DRM_IOCTL_VERSION, none));
        CHECK(efault(uapi::ioctl_getparam, reinterpret_cast<void*>(16)));
        CHECK(efault(uapi::ioctl_getparam, ro)); // read, then written back
    }
    SECTION("GETPARAM's value pointer") {
        for (uintptr_t where : {bad, readonly, uintptr_t{8}}) {
            uapi::getparam p{};
            p.param = 1;
            p.value = where;
            CHECK(efault(uapi::ioctl_getparam, &p));
        }
    }
    SECTION("GET_CAPS's address") {
        for (uintptr_t where : {bad, readonly}) {
            uapi::get_caps g{};
            g.cap_set_id = 10;
            g.size = 24;
            g.addr = where;
            CHECK(efault(uapi::ioctl_get_caps, &g));
        }
    }
    SECTION("CONTEXT_INIT's parameters") {
        uapi::context_init ci{};
        ci.num_params = 2;
        ci.ctx_set_params = bad;
        CHECK(efault(uapi::ioctl_context_init, &ci));
        CHECK(context_init_apir(fd) == 0); // nothing was set
    }
    SECTION("VERSION's name, date and description buffers") {
        for (int which = 0; which < 3; ++which) {
            char ok[64];
            drm_version v{};
            v.name = ok, v.name_len = sizeof ok;
            v.date = ok, v.date_len = sizeof ok;
            v.desc = ok, v.desc_len = sizeof ok;
            (which == 0 ? v.name : which == 1 ? v.date : v.desc) = static_cast<char*>(ro);
            CHECK(efault(DRM_IOCTL_VERSION, &v));
        }
    }
    SECTION("EXECBUFFER's command and BO handles") {
        REQUIRE(context_init_apir(fd) == 0);
        uapi::execbuffer e{};
        e.size = 12;
        e.command = bad;
        CHECK(efault(uapi::ioctl_execbuffer, &e));
        const uint32_t cmd[3] = {0, 0, 2};
        e.command = reinterpret_cast<uintptr_t>(cmd);
        e.num_bo_handles = 1;
        e.bo_handles = bad;
        CHECK(efault(uapi::ioctl_execbuffer, &e));
    }
    munmap(none, 4096);
    munmap(ro, 4096);
    CHECK(close(fd) == 0);
    CHECK(counts().open_files == 0);
}

TEST_CASE("close_range and closefrom close the node: a later file on the number is not it",
          "[vdrm]") {
    for (int how = 0; how < 2; ++how) {
        const int fd = open(node, O_RDWR | O_CLOEXEC);
        REQUIRE(fd >= 0);
        const int high = fcntl(fd, F_DUPFD_CLOEXEC, 900);
        REQUIRE(high >= 900);
        REQUIRE(close(fd) == 0);
        CHECK(counts().open_files == 1);
        if (how == 0)
            REQUIRE(close_range(unsigned(high), unsigned(high), 0) == 0);
        else
            closefrom(high);
        CHECK(counts().open_files == 0);
        const int other = open("/dev/null", O_RDONLY);
        REQUIRE(other >= 0);
        REQUIRE(dup2(other, high) == high);
        errno = 0;
        drm_version v{};
        CHECK(ioctl(high, DRM_IOCTL_VERSION, &v) == -1); // /dev/null's answer, not the node's
        CHECK(errno == ENOTTY);
        CHECK(close(high) == 0);
        CHECK(close(other) == 0);
    }
    // CLOSE_RANGE_CLOEXEC keeps the descriptor: it is still the node.
    const int fd = open(node, O_RDWR);
    REQUIRE(fd >= 0);
    REQUIRE(close_range(unsigned(fd), unsigned(fd), CLOSE_RANGE_CLOEXEC) == 0);
    CHECK((fcntl(fd, F_GETFD) & FD_CLOEXEC) != 0);
    drmVersionPtr v = drmGetVersion(fd);
    CHECK(v);
    if (v) drmFreeVersion(v);
    CHECK(close(fd) == 0);
    CHECK(counts().open_files == 0);
}

TEST_CASE("a partial munmap of a node mapping unmaps those pages and keeps the rest", "[vdrm]") {
    const int fd = open(node, O_RDWR | O_CLOEXEC);
    REQUIRE(fd >= 0);
    REQUIRE(context_init_apir(fd) == 0);
    const size_t pg = 4096;
    Blob b;
    REQUIRE(make_blob(fd, 4 * pg, b));
    auto* p = static_cast<unsigned char*>(b.p);
    const std::string blob = file_mapped_at(p);
    REQUIRE(!blob.empty());
    std::memset(p, 7, 4 * pg);
    CHECK(counts().mappings == 1);
    // A page given back is the process's again at once: its allocator, or the host
    // thread's first use of thread-local storage, may map memory there. So a page is
    // checked to be no longer the blob's (not to be unmapped), and never unmapped twice:
    // unmapping the head and the hole again would take that memory from its owner.
    REQUIRE(munmap(p + pg, pg) == 0); // a hole in the middle
    CHECK(file_mapped_at(p + pg) != blob);
    CHECK(p[0] == 7);
    CHECK(p[2 * pg] == 7);
    p[3 * pg] = 9;
    REQUIRE(munmap(p, pg) == 0); // the head
    CHECK(file_mapped_at(p) != blob);
    CHECK(counts().mappings == 1);
    CHECK(p[3 * pg] == 9);
    REQUIRE(gem_close(fd, b.handle) == 0);
    CHECK(counts().objects == 1);             // the mapping still holds the object
    REQUIRE(munmap(p + 2 * pg, 2 * pg) == 0); // the rest
    CHECK(counts().mappings == 0);
    CHECK(counts().objects == 0);
    CHECK(close(fd) == 0);
    CHECK(counts().open_files == 0);
}
