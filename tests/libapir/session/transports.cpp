#include "test_transports.hpp"

#include <apir/loopback.hpp>
#include <apir/vtest.hpp>

#include "../transport/vtest/vtest_server.hpp"

#include <cstdlib>
#include <string>

#ifdef APIR_TEST_HAVE_SIM
#include <apir/sim/sim_device.hpp>
#include <apir/vdrm/vdrm.h>
#include <apir/virtgpu.hpp>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include <dlfcn.h>
#endif

namespace apir_test {

namespace {
apir::AnyTransport make_loopback(TransportSetup s, apir::LoopbackOptions::Mode mode) {
    apir::LoopbackOptions o;
    o.mode = mode;
    o.host = std::move(s.host);
    if (s.deliver) return apir::AnyTransport(dropping_loopback(std::move(o), std::move(s.deliver)));
    return apir::AnyTransport(apir::LoopbackTransport(std::move(o)));
}

#ifdef APIR_TEST_HAVE_SIM
// VirtgpuTransport on the simulated virtio-gpu device (apir-sim).
apir::AnyTransport make_drm_sim(TransportSetup setup) {
    const bool venus = setup.host.command_type_offset == apir::venus_command_offset;
    apir::SimConfig config;
    config.host = std::move(setup.host);
    config.deliver = std::move(setup.deliver); // a rejected command never reaches the host
    apir::VirtgpuOptions options;
    // The transport holds the device until it is destroyed.
    options.device = std::make_shared<apir::SimDevice>(std::move(config));
    options.capset = venus ? apir::CapsetChoice::venus : apir::CapsetChoice::apir;
    options.use_environment = false;
    auto t = apir::VirtgpuTransport::open(std::move(options));
    if (!t) {
        std::fprintf(stderr, "drm-sim: %s\n", t.error().message().c_str());
        std::abort(); // the simulated device is always usable: a bug
    }
    return apir::AnyTransport(std::move(*t));
}

// VirtgpuTransport on the machine's devices (libdrm, real ioctl and mmap), where the
// machine is the virtual render node of libapir-vdrm.so: present only when the test
// runs with it preloaded. Each test's host is set through apir_vdrm_set_host.
using SetHost = int (*)(const apir_vdrm_host_setup*);

SetHost vdrm_set_host() {
    return reinterpret_cast<SetHost>(dlsym(RTLD_DEFAULT, "apir_vdrm_set_host"));
}

apir::AnyTransport make_drm_vdrm(TransportSetup setup) {
    using Deliver = std::function<bool(std::span<const std::byte>)>;
    std::string config;
    for (const auto& [k, v] : setup.host.config)
        config += k + "=" + v + "\n";
    apir_vdrm_host_setup hs{};
    hs.config = config.c_str();
    hs.version_major = setup.host.version_major;
    hs.version_minor = setup.host.version_minor;
    if (setup.deliver) {
        hs.user = new Deliver(std::move(setup.deliver));
        hs.deliver = [](void* user, const void* cmd, size_t size) {
            return (*static_cast<Deliver*>(user))({static_cast<const std::byte*>(cmd), size}) ? 1
                                                                                              : 0;
        };
        hs.release = [](void* user) { delete static_cast<Deliver*>(user); };
    }
    if (int r = vdrm_set_host()(&hs); r != 0) {
        std::fprintf(stderr, "drm-vdrm: apir_vdrm_set_host: %s\n", std::strerror(-r));
        std::abort();
    }
    apir::VirtgpuOptions options; // the system device: the virtual node
    options.use_environment = false;
    options.logger = apir::Logger(nullptr);
    auto t = apir::VirtgpuTransport::open(std::move(options));
    if (!t) {
        std::fprintf(stderr, "drm-vdrm: %s\n", t.error().message().c_str());
        std::abort(); // the node is configured by the test: a bug
    }
    return apir::AnyTransport(std::move(*t));
}
#endif

// VtestTransport on a virgl_test_server of its own (virglrenderer's APIR host), started
// with the test's host configuration in its environment. The server goes with the
// transport. Commands the test drops are never sent.
struct ServedVtest {
    std::unique_ptr<VtestServer> server; // destroyed after the transport
    apir::VtestTransport t;
    std::function<bool(std::span<const std::byte>)> deliver;

    apir::Expected<apir::Shmem> create_shmem(size_t n) { return t.create_shmem(n); }
    apir::Expected<void> submit(std::span<const std::byte> cmd, uint32_t r, apir::Deadline d) {
        if (deliver && !deliver(cmd)) return {};
        return t.submit(cmd, r, d);
    }
    apir::Expected<uint32_t> wait_reply(const apir::Shmem& p, const apir::WaitPolicy& w,
                                        apir::Deadline d) {
        return t.wait_reply(p, w, d);
    }
    int32_t command_type_offset() const { return t.command_type_offset(); }
    std::string_view name() const { return t.name(); }
};

apir::AnyTransport make_vtest(TransportSetup setup) {
    auto server = std::make_unique<VtestServer>(setup.host.config);
    apir::VtestOptions o;
    o.socket_path = server->socket_path();
    o.logger = apir::Logger(nullptr);
    auto t = apir::VtestTransport::open(std::move(o));
    if (!t) {
        std::fprintf(stderr, "vtest: %s\n", t.error().message().c_str());
        std::abort(); // the server was started for this test: a bug
    }
    return apir::AnyTransport(std::make_unique<ServedVtest>(
        ServedVtest{std::move(server), std::move(*t), std::move(setup.deliver)}));
}

bool named(const char* list, const std::string& name) {
    return list && (std::string(",") + list + ",").find("," + name + ",") != std::string::npos;
}
} // namespace

const std::vector<TestTransport>& test_transports() {
    static const std::vector<TestTransport> all = [] {
        std::vector<TestTransport> v{
            {"loopback-inline",
             [](TransportSetup s) {
                 return make_loopback(std::move(s), apir::LoopbackOptions::Mode::inline_host);
             }},
            {"loopback-threaded",
             [](TransportSetup s) {
                 return make_loopback(std::move(s), apir::LoopbackOptions::Mode::threaded);
             }},
        };
#ifdef APIR_TEST_HAVE_SIM
        v.push_back({"drm-sim", make_drm_sim});
        if (vdrm_set_host()) v.push_back({"drm-vdrm", make_drm_vdrm});
#endif
        const char* only = std::getenv("APIR_TEST_TRANSPORTS");
        // vtest needs a server per test: only when asked for by name
        // (tests/libapir/transport/vtest).
        if (named(only, "vtest")) {
            if (auto why = VtestServer::unavailable()) {
                std::printf("skip: vtest: %s\n", why->c_str());
                std::exit(77);
            }
            v.push_back({"vtest", make_vtest});
        }
        // APIR_TEST_TRANSPORTS=a,b keeps only those (e.g. drm-vdrm under the virtual node).
        if (only && *only)
            std::erase_if(v, [&](const TestTransport& t) { return !named(only, t.name); });
        // A suite over no transport would pass without testing anything.
        if (v.empty()) {
            std::fprintf(stderr,
                         "FAIL: no transport to run over (APIR_TEST_TRANSPORTS=%s): "
                         "a transport asked for is missing from this build or "
                         "process\n",
                         only ? only : "");
            std::exit(1);
        }
        return v;
    }();
    return all;
}

std::string backend_path(const std::string& name) {
    if (name == "demo") return APIR_TEST_BACKEND_DEMO;
    if (name == "failing") return APIR_TEST_BACKEND_FAILING;
    if (name == "missing-symbol") return APIR_TEST_BACKEND_MISSING_SYMBOL;
    if (name == "not-a-library") return APIR_TEST_BACKEND_NOT_A_LIBRARY;
    return "/nonexistent/" + name;
}

} // namespace apir_test
