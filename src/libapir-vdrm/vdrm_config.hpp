// Internal: the settings of the virtual render node, read from the environment
// (include/apir/vdrm/vdrm.h, docs/VDRM.md).
#pragma once

#include "apir/sim/sim_device.hpp"

#include <map>
#include <string>
#include <string_view>
#include <vector>

namespace apir::vdrm {

struct Fault {
    SimOp op{};
    int err = 0;
    unsigned after = 0;
    unsigned times = ~0u; // every later call
};

struct DeviceSettings {
    int minor = -1; ///< render minor; -1: the first one the machine does not use
    std::string pci_slot = "0000:00:02.0";
};

struct Settings {
    SimConfig sim;
    DeviceSettings device;
    std::vector<Fault> faults;
};

/// Reads APIR_VDRM_*; false with a one-line reason when a variable is wrong.
[[nodiscard]] bool read_settings(Settings& out, std::string& why);

/// key=value items separated by sep (parse_host_config); false with the reason in why.
[[nodiscard]] bool parse_config(std::string_view text, char sep, HostConfig& out, std::string& why);

} // namespace apir::vdrm
