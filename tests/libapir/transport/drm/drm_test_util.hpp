// Helpers shared by the DRM tests: a simulated device, transport options, counters.
#pragma once

#include <apir/sim/sim_device.hpp>
#include <apir/virtgpu.hpp>

#include <filesystem>
#include <memory>
#include <string>

namespace apir_test {

// The simulated device is apir's (include/apir/sim/sim_device.hpp); the tests name it here.
using apir::SimCapset;
using apir::SimConfig;
using apir::SimDevice;
using apir::SimKernel;
using apir::SimNode;
using apir::SimOp;

inline apir::Logger quiet_logger() {
    return apir::Logger(apir::stderr_sink, apir::LogLevel::off);
}

inline std::shared_ptr<SimDevice> make_sim(SimConfig config = {}) {
    config.host.logger = quiet_logger();
    return std::make_shared<SimDevice>(std::move(config));
}

/// Transport options on a simulated device; the environment is ignored unless asked.
inline apir::VirtgpuOptions sim_options(std::shared_ptr<SimDevice> dev,
                                        apir::CapsetChoice capset = apir::CapsetChoice::automatic) {
    apir::VirtgpuOptions o;
    o.device = std::move(dev);
    o.capset = capset;
    o.use_environment = false;
    o.logger = quiet_logger();
    return o;
}

/// Host options that load the demo backend.
inline apir::HostOptions demo_host() {
    apir::HostOptions h;
#ifdef APIR_DEMO_BACKEND_PATH
    h.config["apir.load_library.path"] = APIR_DEMO_BACKEND_PATH;
#endif
    h.logger = quiet_logger();
    return h;
}

inline bool have_demo_backend() {
#ifdef APIR_DEMO_BACKEND_PATH
    return true;
#else
    return false;
#endif
}

/// Descriptors open in this process.
inline size_t process_fds() {
    size_t n = 0;
    for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator("/proc/self/fd"))
        ++n;
    return n;
}

} // namespace apir_test
