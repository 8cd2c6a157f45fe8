// The simulated device behind test-probe-sim: apir-probe built for the tests, so that
// its drm output is checked without a VM. APIR_PROBE_SIM picks the machine.
#include "drm_test_util.hpp"

#include <cerrno>
#include <cstdlib>
#include <string_view>

std::shared_ptr<apir::DrmDevice> apir_probe_test_device() {
    using namespace apir_test;
    const char* env = std::getenv("APIR_PROBE_SIM");
    const std::string_view machine = env ? env : "ok";
    SimConfig c;
    c.host = demo_host();
    c.nodes = {SimNode{"/dev/dri/renderD128", "i915", 1, 0, "pci 0000:00:02.0 [8086:46a6]"},
               SimNode{}};
    c.nodes[1].path = "/dev/dri/renderD129";
    if (machine == "no-context-init") c.has_context_init = false;
    if (machine == "venus-only")
        c.capsets = {SimCapset{4, 0, std::vector<std::byte>(64, std::byte{1})}};
    if (machine == "silent-host") c.deliver = [](std::span<const std::byte>) { return false; };
    if (machine == "no-virtio") c.nodes.pop_back();
    auto dev = make_sim(std::move(c));
    if (machine == "context-init-fails") dev->fail(SimOp::context_init, EINVAL);
    return dev;
}
