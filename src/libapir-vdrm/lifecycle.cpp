// libapir-vdrm.so: the node's lifecycle. It is set up at the first call that may concern
// it (ready()), torn down at exit, given up in a child of fork(), and the private trees
// of processes that ended without their exit handler are removed by the next node.
#include "node_state.hpp"

#include <cstdio>
#include <cstdlib>
#include <cstring>

#include <dirent.h>
#include <ftw.h>
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

namespace apir::vdrm {
namespace {

pid_t g_owner = 0; // the process that made the node
std::mutex g_init_mu;
thread_local bool t_inside = false; // in our own initialization: pass everything through

// Trees of processes that died without their exit handlers (a crash, a kill), and
// trees of this very process (made before an exec, which runs no exit handler): the
// tree is named after its process, and the next node to start removes the orphans.
void remove_orphans(const std::string& dir) noexcept {
    DIR* d = APIR_NEXT(opendir)(dir.c_str());
    if (!d) return;
    std::vector<std::string> gone;
    while (const dirent* e = ::readdir(d)) {
        int pid = 0;
        if (std::sscanf(e->d_name, "apir-vdrm-%d-", &pid) != 1 || pid <= 0) continue;
        if (pid == ::getpid() || (::kill(pid, 0) != 0 && errno == ESRCH))
            gone.push_back(dir + "/" + e->d_name);
    }
    ::closedir(d);
    for (const auto& g : gone)
        ::nftw(
            g.c_str(),
            [](const char* p, const struct stat*, int, struct FTW*) {
                return ::remove(p) == 0 ? 0 : 0;
            },
            16, FTW_DEPTH | FTW_PHYS);
}

// The exit handler. Other threads may still be inside a call, and the program's
// mappings stay in use until the process ends, so nothing is freed: the files the
// program left open are closed (their hosts stop, backends unload; a host stuck in a
// backend call is abandoned after SimConfig::stop_grace), later calls on the node's
// descriptors get EBADF, and the private tree is removed. In a child of fork() (which
// inherits the handler) nothing happens: the device, its threads and the tree are the
// parent's.
void teardown() noexcept {
    if (g_state.load() != st_ready || ::getpid() != g_owner) return;
    std::lock_guard lk(g_init_mu);
    if (g_state.load() != st_ready) return;
    g_state.store(st_gone);
    InDevice in;
    g_vdrm->dev->close_all();
    remove_tree(*g_vdrm);
}

// In the child of fork(): the node is gone. Its descriptors stay open (as memfds) but
// every call on them fails with ENODEV, and close() only closes them; nothing of the
// device (whose locks another thread of the parent may have held) is touched.
void on_fork_child() noexcept {
    const int s = g_state.load();
    if (s == st_ready) g_state.store(st_forked);
    if (s == st_init) g_state.store(st_gone); // the parent was initializing: not here
}

[[gnu::constructor]] void register_fork_handler() noexcept {
    (void)::pthread_atfork(nullptr, nullptr, on_fork_child);
}

// The first render minor the machine does not use, when the settings name none.
void choose_minor(DeviceSettings& d) noexcept {
    if (d.minor >= 0) return;
    d.minor = 128;
    struct stat st;
    while (d.minor < 255 &&
           APIR_NEXT(stat)(("/dev/dri/renderD" + std::to_string(d.minor)).c_str(), &st) == 0)
        ++d.minor;
}

// The private tree, in a directory of its own named after the process; false with the
// reason in why.
bool make_tree(Vdrm& v, std::string& why) {
    const char* tmp = std::getenv("TMPDIR");
    const std::string dir = tmp && *tmp ? tmp : "/tmp";
    remove_orphans(dir);
    std::string templ = dir + "/apir-vdrm-" + std::to_string(::getpid()) + "-XXXXXX";
    if (!::mkdtemp(templ.data())) {
        why = "cannot make its private directory in " + std::string(tmp && *tmp ? tmp : "/tmp") +
              ": " + std::strerror(errno);
        return false;
    }
    v.root = templ;
    if (!build_tree(v)) {
        why = "cannot build its sysfs tree in " + v.root + ": " + std::strerror(errno);
        remove_tree(v);
        return false;
    }
    return true;
}

// The node's paths and its simulated device, as the settings describe them.
void make_device(Vdrm& v) {
    const std::string minor = std::to_string(v.settings.device.minor);
    v.node_path = "/dev/dri/renderD" + minor;
    v.sys_char = "/sys/dev/char/226:" + minor;
    v.sys_class = "/sys/class/drm/renderD" + minor;
    SimConfig c = v.settings.sim;
    c.nodes.front().path = v.node_path;
    c.check_user_memory = true; // any program's pointers: EFAULT, never a fault here
    c.logger = Logger([](LogLevel, std::string_view m) { say(std::string(m)); }, LogLevel::warn);
    v.dev = std::make_shared<SimDevice>(std::move(c));
    for (const auto& f : v.settings.faults)
        v.dev->fail(f.op, f.err, f.after, f.times);
    ::clock_gettime(CLOCK_REALTIME, &v.born);
}

} // namespace

void say(const std::string& line) noexcept {
    std::string l = "apir-vdrm: " + line + "\n";
    (void)!::write(2, l.data(), l.size());
}

bool ready() noexcept {
    const int s = g_state.load(std::memory_order_acquire);
    if (s == st_ready) return true;
    if (s == st_gone || s == st_forked || t_inside) return false;
    std::lock_guard lk(g_init_mu);
    if (g_state.load() != st_none) return g_state.load() == st_ready;
    g_state.store(st_init);
    t_inside = true;
    auto v = std::make_unique<Vdrm>();
    std::string why;
    bool ok = read_settings(v->settings, why);
    if (ok) {
        choose_minor(v->settings.device);
        ok = make_tree(*v, why);
    }
    if (ok) {
        make_device(*v);
        g_vdrm = v.release();
        g_owner = ::getpid();
        std::atexit(teardown);
        g_state.store(st_ready, std::memory_order_release);
    } else {
        say(why + "; the virtual node is disabled");
        g_state.store(st_gone, std::memory_order_release);
    }
    t_inside = false;
    return ok;
}

} // namespace apir::vdrm
