#include "test_transports.hpp"

#include <apir/loopback.hpp>

#ifdef APIR_TEST_HAVE_SIM
#include <apir/sim_device.hpp>
#include <apir/virtgpu.hpp>

#include <cstdio>
#include <cstdlib>
#endif

namespace apir_test {

namespace {
apir::AnyTransport make_loopback(TransportSetup s, apir::LoopbackOptions::Mode mode) {
    apir::LoopbackOptions o;
    o.mode = mode;
    o.host = std::move(s.host);
    o.deliver = std::move(s.deliver);
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
#endif
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
#endif
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
