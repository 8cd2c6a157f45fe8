// The session suite's extra transport: VirtgpuTransport on the simulated virtio-gpu device.
#include "session/test_transports.hpp"
#include "sim_device.hpp"

#include <apir/virtgpu.hpp>

#include <cstdio>
#include <cstdlib>

namespace apir_test {

std::vector<TestTransport> extra_test_transports() {
    TestTransport drm_sim;
    drm_sim.name = "drm-sim";
    drm_sim.make = [](TransportSetup setup) -> apir::AnyTransport {
        const bool venus = setup.host.command_type_offset == apir::venus_command_offset;
        SimConfig config;
        config.host = std::move(setup.host);
        config.deliver = std::move(setup.deliver); // a rejected command never reaches the host
        apir::VirtgpuOptions options;
        // The transport holds the device until it is destroyed.
        options.device = std::make_shared<SimDevice>(std::move(config));
        options.capset = venus ? apir::CapsetChoice::venus : apir::CapsetChoice::apir;
        options.use_environment = false;
        auto t = apir::VirtgpuTransport::open(std::move(options));
        if (!t) {
            std::fprintf(stderr, "drm-sim: %s\n", t.error().message().c_str());
            std::abort(); // the simulated device is always usable: a bug
        }
        return apir::AnyTransport(std::move(*t));
    };
    return {std::move(drm_sim)};
}

} // namespace apir_test
