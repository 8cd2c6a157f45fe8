// libapir-vdrm.so: the control functions (include/apir/vdrm/vdrm.h): the host of the
// contexts created next, and what is alive on the simulated device.
#include "node_state.hpp"

#include "apir/vdrm/vdrm.h"

using namespace apir::vdrm;

namespace {

// The setup's delivery hook, shared by the contexts that use it; its release() runs
// when the last one goes.
std::function<bool(std::span<const std::byte>)> deliver_hook(const apir_vdrm_host_setup& setup) {
    struct Hook {
        apir_vdrm_deliver_fn fn;
        void* user;
        void (*release)(void*);
        ~Hook() {
            if (release) release(user);
        }
    };
    std::shared_ptr<Hook> hook(new Hook{setup.deliver, setup.user, setup.release});
    return [hook](std::span<const std::byte> c) {
        return hook->fn(hook->user, c.data(), c.size()) != 0;
    };
}

} // namespace

APIR_VDRM_EXPORT int apir_vdrm_set_host(const struct apir_vdrm_host_setup* setup) {
    auto release = [&] {
        if (setup && setup->release) setup->release(setup->user);
    };
    if (!ready()) {
        release();
        return -ENODEV;
    }
    Vdrm& v = *g_vdrm;
    if (!setup) {
        v.dev->set_host(v.settings.sim.host, v.settings.sim.deliver);
        return 0;
    }
    apir::HostOptions h;
    h.logger = v.settings.sim.host.logger;
    std::string why;
    if (setup->config && !apir::vdrm::parse_config(setup->config, '\n', h.config, why)) {
        release();
        return -EINVAL;
    }
    if (setup->version_major || setup->version_minor) {
        h.version_major = setup->version_major;
        h.version_minor = setup->version_minor;
    }
    std::function<bool(std::span<const std::byte>)> deliver;
    if (setup->deliver)
        deliver = deliver_hook(*setup);
    else
        release();
    v.dev->set_host(std::move(h), std::move(deliver));
    return 0;
}

APIR_VDRM_EXPORT int apir_vdrm_counts(struct apir_vdrm_counts* out) {
    if (!out) return -EINVAL;
    if (!ready()) return -ENODEV;
    const auto& d = *g_vdrm->dev;
    out->open_files = d.open_files();
    out->gem_handles = d.gem_handles();
    out->mappings = d.mappings();
    out->objects = d.objects();
    out->executed_commands = d.executed_commands();
    out->dropped_commands = d.dropped_commands();
    return 0;
}
