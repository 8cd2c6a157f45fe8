// Device discovery: which render node is a usable virtio-gpu, and why the others are not.
#include "apir/internal/virtgpu_probe.hpp"

#include <array>
#include <cerrno>
#include <cstdlib>

namespace apir {

using uapi::Param;

namespace {

// The parameters reported for every virtio_gpu node, and those the transport needs.
constexpr std::array<Param, 7> reported_params = {
    Param::features_3d,  Param::capset_query_fix, Param::resource_blob,        Param::host_visible,
    Param::cross_device, Param::context_init,     Param::supported_capset_ids,
};
constexpr std::array<Param, 4> required_params = {
    Param::features_3d,
    Param::resource_blob,
    Param::host_visible,
    Param::context_init,
};

bool env_present(const VirtgpuOptions& o) {
    return o.use_environment && o.capset == CapsetChoice::automatic &&
           std::getenv(capset_env_var) != nullptr;
}

std::string capset_list(const std::vector<uint32_t>& ids) {
    std::string s;
    for (uint32_t id : ids)
        s += fmt::format("{}{}", s.empty() ? "" : ", ", capset_name(id));
    return s.empty() ? "none" : s;
}

} // namespace

std::string capset_name(uint32_t id) {
    switch (id) {
    case 1:
        return "VIRGL";
    case 2:
        return "VIRGL2";
    case 3:
        return "GFXSTREAM_VULKAN";
    case capset_venus:
        return "VENUS";
    case 5:
        return "CROSS_DOMAIN";
    case 6:
        return "DRM";
    case 7:
        return "GFXSTREAM_GLES";
    case 8:
        return "GFXSTREAM_COMPOSER";
    case capset_apir:
        return "APIR";
    default:
        return fmt::format("capset {}", id);
    }
}

std::string_view virtgpu_param_name(uint64_t id) noexcept {
    switch (static_cast<Param>(id)) {
    case Param::features_3d:
        return "3D_FEATURES";
    case Param::capset_query_fix:
        return "CAPSET_QUERY_FIX";
    case Param::resource_blob:
        return "RESOURCE_BLOB";
    case Param::host_visible:
        return "HOST_VISIBLE";
    case Param::cross_device:
        return "CROSS_DEVICE";
    case Param::context_init:
        return "CONTEXT_INIT";
    case Param::supported_capset_ids:
        return "SUPPORTED_CAPSET_IDs";
    case Param::explicit_debug_name:
        return "EXPLICIT_DEBUG_NAME";
    }
    return "UNKNOWN_PARAM";
}

CapsetDecision choose_capset(CapsetChoice choice, bool env_present,
                             std::optional<uint64_t> offered) {
    switch (choice) {
    case CapsetChoice::apir:
        return {capset_apir, "chosen by the capset option"};
    case CapsetChoice::venus:
        return {capset_venus, "chosen by the capset option"};
    case CapsetChoice::automatic:
        break;
    }
    if (env_present) return {capset_apir, "GGML_REMOTING_USE_APIR_CAPSET is set"};
    auto has = [&](uint32_t id) { return offered && (*offered >> id & 1) != 0; };
    if (has(capset_apir)) return {capset_apir, "default: the device offers APIR"};
    if (has(capset_venus))
        return {capset_venus, "default: the device offers Venus but not APIR (transition mode)"};
    return {capset_apir, "default"};
}

std::optional<uint64_t> VirtgpuNodeReport::param(uint64_t id) const noexcept {
    for (const auto& p : params)
        if (p.id == id && p.error == 0) return p.value;
    return std::nullopt;
}

std::vector<uint32_t> VirtgpuNodeReport::offered_capsets() const {
    std::vector<uint32_t> ids;
    if (auto mask = param(uint64_t(Param::supported_capset_ids)))
        for (uint32_t i = 0; i < 64; ++i)
            if (*mask >> i & 1) ids.push_back(i);
    return ids;
}

const VirtgpuNodeReport* VirtgpuDiscovery::usable() const noexcept {
    for (const auto& n : nodes)
        if (n.usable()) return &n;
    return nullptr;
}

namespace drm {

Expected<std::vector<DrmNode>> nodes_to_probe(DrmDevice& dev, const VirtgpuOptions& options) {
    std::vector<DrmNode> nodes;
    if (!options.node.empty()) {
        nodes.push_back({options.node, ""});
        return nodes;
    }
    if (int r = dev.render_nodes(nodes); r < 0) return fail(sys_error(Syscall::enumerate, -r, ""));
    return nodes;
}

UniqueFd probe_node(DrmDevice& dev, const DrmNode& node, const VirtgpuOptions& options,
                    VirtgpuNodeReport& report) {
    report = VirtgpuNodeReport{};
    report.node = node;
    auto skip = [&](Error e) {
        report.error = std::move(e);
        return UniqueFd{};
    };

    const int raw = dev.open(node.path);
    if (raw < 0) return skip(sys_error(Syscall::open, -raw, node.path));
    UniqueFd fd(raw, {&dev});

    drm::DriverVersion v;
    if (int r = ioctl_version(dev, fd.get(), v); r < 0)
        return skip(sys_error(Syscall::version, -r, ""));
    report.driver = v.name;
    report.driver_major = v.major;
    report.driver_minor = v.minor;
    report.driver_patch = v.patch;
    if (!report.is_virtio_gpu())
        return skip(
            Error(Errc::no_device, fmt::format("driven by {} {}.{}.{}, not virtio_gpu 0.x",
                                               v.name.empty() ? "an unnamed driver" : v.name,
                                               v.major, v.minor, v.patch)));

    for (Param p : reported_params) {
        VirtgpuParamValue pv;
        pv.id = uint64_t(p);
        pv.name = virtgpu_param_name(pv.id);
        if (int r = ioctl_getparam(dev, fd.get(), pv.id, pv.value); r < 0) pv.error = -r;
        report.params.push_back(pv);
    }
    for (Param p : required_params) {
        const auto& pv = report.params[static_cast<size_t>(p) - 1];
        // EINVAL: a kernel too old to know the parameter; anything else is a failure.
        if (pv.error != 0 && pv.error != EINVAL)
            return skip(sys_error(Syscall::getparam, pv.error, pv.name));
        if (pv.error != 0 || pv.value == 0) report.missing.push_back(pv.name);
    }
    if (!report.missing.empty()) {
        std::string names;
        for (auto n : report.missing)
            names += fmt::format("{}{}", names.empty() ? "" : ", ", n);
        return skip(Error(Errc::unsupported,
                          fmt::format("the virtio-gpu device lacks {}: start the VM's virtio-gpu "
                                      "with 3D acceleration, blob resources, a host-visible memory "
                                      "region and context init (guest Linux 5.16 or later)",
                                      names)));
    }

    const auto offered = report.param(uint64_t(Param::supported_capset_ids));
    const CapsetDecision choice = choose_capset(options.capset, env_present(options), offered);
    VirtgpuCapsetReport caps;
    caps.id = choice.id;
    caps.reason = choice.reason;
    report.capset = caps;
    if (offered && (*offered >> choice.id & 1) == 0) {
        const bool apir = choice.id == capset_apir;
        return skip(Error(
            Errc::unsupported,
            fmt::format("the host does not offer capset {} ({}); it offers {}; {}", choice.id,
                        capset_name(choice.id), capset_list(report.offered_capsets()),
                        apir ? "the host needs a virglrenderer with the APIR component and a VMM "
                               "that routes capset 10, or use the Venus capset with "
                               "VIRGL_ROUTE_VENUS_TO_APIR=1 on the host"
                             : "the VMM must enable Venus")));
    }

    // Zeroed: the kernel copies min(size, capset size) bytes and does not say how many,
    // so a short capset reads as "no blob support" rather than as garbage.
    uapi::apir_capset data{};
    report.capset->queried = true;
    if (int r = ioctl_get_caps(dev, fd.get(), choice.id, 0, &data, sizeof(data),
                               Deadline::after(options.open_timeout));
        r < 0) {
        report.capset->error = -r;
        return skip(
            sys_error(Syscall::get_caps, -r,
                      fmt::format("capset {} ({}) version 0", choice.id, capset_name(choice.id))));
    }
    report.capset->apir_version = data.apir_version;
    report.capset->supports_blob_resources = data.supports_blob_resources;
    // In Venus transition mode the host may answer with the Venus capset, whose second
    // word is non-zero too; either way a zero there means the host cannot do blobs.
    if (data.supports_blob_resources == 0)
        return skip(Error(Errc::unsupported,
                          fmt::format("capset {} ({}) does not report blob resource support (its "
                                      "data is zero or shorter than {} bytes: an old host?)",
                                      choice.id, capset_name(choice.id), sizeof(data))));
    return fd;
}

Error no_usable_node(const std::vector<VirtgpuNodeReport>& reports) {
    if (reports.empty())
        return Error(Errc::no_device, "no DRM render node on this machine; in a VM, give it a "
                                      "virtio-gpu device and load the virtio_gpu module");
    // The virtio-gpu node that got furthest explains best; the others follow.
    const VirtgpuNodeReport* best = nullptr;
    for (const auto& r : reports)
        if (r.error && r.is_virtio_gpu()) {
            best = &r;
            break;
        }
    std::string others;
    for (const auto& r : reports) {
        if (&r == best || !r.error) continue;
        others +=
            fmt::format("{}{}: {}", others.empty() ? "" : "; ", r.node.path, r.error->detail());
    }
    if (best) {
        Error e = *best->error;
        std::string detail = fmt::format("{}: {}", best->node.path, e.detail());
        if (!others.empty()) detail += fmt::format("; also skipped: {}", others);
        Error out(e.code(), std::move(detail));
        return std::move(out.with_errno(e.sys_errno()));
    }
    Error out(Errc::no_device, fmt::format("no usable virtio-gpu render node: {}", others));
    // All nodes failing the same way (say, permission denied) keep that errno.
    int err = reports.front().error->sys_errno();
    for (const auto& r : reports)
        if (r.error->sys_errno() != err) err = 0;
    return std::move(out.with_errno(err));
}

} // namespace drm

VirtgpuDiscovery discover_virtgpu(const VirtgpuOptions& options) {
    VirtgpuDiscovery out;
    auto dev = options.device ? options.device : system_drm_device();
    auto nodes = drm::nodes_to_probe(*dev, options);
    if (!nodes) {
        out.error = nodes.error();
        return out;
    }
    for (const auto& node : *nodes) {
        VirtgpuNodeReport report;
        (void)drm::probe_node(*dev, node, options, report); // closed again right away
        out.nodes.push_back(std::move(report));
    }
    if (!out.usable()) out.error = drm::no_usable_node(out.nodes);
    return out;
}

} // namespace apir
