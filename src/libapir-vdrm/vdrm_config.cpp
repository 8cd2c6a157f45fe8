// The virtual render node's environment variables.
#include "vdrm_config.hpp"

#include <charconv>
#include <cstdlib>
#include <cstring>

namespace apir::vdrm {
namespace {

std::vector<std::string_view> split(std::string_view s, char sep) {
    std::vector<std::string_view> out;
    while (!s.empty()) {
        const size_t i = s.find(sep);
        std::string_view item = s.substr(0, i);
        while (!item.empty() && item.front() == ' ')
            item.remove_prefix(1);
        while (!item.empty() && item.back() == ' ')
            item.remove_suffix(1);
        if (!item.empty()) out.push_back(item);
        if (i == std::string_view::npos) break;
        s.remove_prefix(i + 1);
    }
    return out;
}

template <class N>
bool number(std::string_view v, N& out) {
    auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), out);
    return ec == std::errc{} && p == v.data() + v.size();
}

// A size with an optional K, M or G suffix (powers of 1024).
bool size_value(std::string_view v, uint64_t& out) {
    uint64_t mul = 1;
    if (!v.empty()) {
        switch (v.back()) {
        case 'K':
        case 'k':
            mul = uint64_t{1} << 10;
            break;
        case 'M':
        case 'm':
            mul = uint64_t{1} << 20;
            break;
        case 'G':
        case 'g':
            mul = uint64_t{1} << 30;
            break;
        default:
            break;
        }
        if (mul != 1) v.remove_suffix(1);
    }
    if (!number(v, out) || out > UINT64_MAX / mul) return false;
    out *= mul;
    return true;
}

bool flag(std::string_view v, bool& out) {
    if (v == "1" || v == "yes" || v == "on") return out = true, true;
    if (v == "0" || v == "no" || v == "off") return out = false, true;
    return false;
}

int errno_value(std::string_view v) {
    int n = 0;
    if (number(v, n)) return n > 0 ? n : 0;
    for (int e = 1; e < 256; ++e)
        if (const char* name = strerrorname_np(e); name && v == name) return e;
    return 0;
}

constexpr std::pair<std::string_view, SimOp> op_names[] = {
    {"open", SimOp::open},
    {"close", SimOp::close},
    {"version", SimOp::version},
    {"getparam", SimOp::getparam},
    {"get_caps", SimOp::get_caps},
    {"context_init", SimOp::context_init},
    {"create_blob", SimOp::create_blob},
    {"map", SimOp::map},
    {"gem_close", SimOp::gem_close},
    {"execbuffer", SimOp::execbuffer},
    {"mmap", SimOp::mmap},
    {"munmap", SimOp::munmap},
};

bool capsets(std::string_view v, const SimConfig& defaults, std::vector<SimCapset>& out,
             uint32_t apir_blob, std::string& why) {
    out.clear();
    for (auto item : split(v, ',')) {
        uint32_t id = 0;
        if (item == "apir")
            id = capset_apir;
        else if (item == "venus")
            id = capset_venus;
        else if (item == "virgl2")
            id = 2;
        else if (!number(item, id) || id > 63) {
            why = "APIR_VDRM_CAPSETS: '" + std::string(item) +
                  "' is not a capset (apir, venus, virgl2 or an id up to 63)";
            return false;
        }
        if (id == capset_apir) {
            out.push_back(SimConfig::apir_capset(apir_blob));
            continue;
        }
        SimCapset c{id, 0, std::vector<std::byte>(64, std::byte{1})};
        for (const auto& d : defaults.capsets)
            if (d.id == id) c = d;
        out.push_back(std::move(c));
    }
    return true;
}

bool device(std::string_view v, Settings& s, uint32_t& apir_blob, std::string& why) {
    for (auto item : split(v, ',')) {
        const size_t eq = item.find('=');
        const std::string_view key = item.substr(0, eq);
        const std::string_view val = eq == std::string_view::npos ? "" : item.substr(eq + 1);
        bool b = false, ok = true;
        if (key == "kernel") {
            if (val == "6.1")
                s.sim.kernel = SimKernel::linux_6_1;
            else if (val == "6.12")
                s.sim.kernel = SimKernel::linux_6_12;
            else
                ok = false;
        } else if (key == "3d") {
            ok = flag(val, b), s.sim.has_3d = b;
        } else if (key == "blob") {
            ok = flag(val, b), s.sim.has_blob = b;
        } else if (key == "context_init") {
            ok = flag(val, b), s.sim.has_context_init = b;
        } else if (key == "apir_blob") {
            ok = flag(val, b), apir_blob = b ? 1 : 0;
        } else if (key == "host_visible") {
            ok = size_value(val, s.sim.host_visible_bytes);
        } else if (key == "driver") {
            ok = !val.empty(), s.sim.nodes.front().driver = std::string(val);
            s.sim.nodes.front().driver_major = val == "virtio_gpu" ? 0 : 1;
        } else if (key == "minor") {
            ok = number(val, s.device.minor) && s.device.minor >= 128 && s.device.minor < 255;
        } else {
            why = "APIR_VDRM_DEVICE: unknown parameter '" + std::string(key) +
                  "' (kernel, 3d, blob, context_init, apir_blob, host_visible, driver, minor)";
            return false;
        }
        if (!ok) {
            why = "APIR_VDRM_DEVICE: bad value in '" + std::string(item) + "'";
            return false;
        }
    }
    return true;
}

bool faults(std::string_view v, Settings& s, std::string& why) {
    for (auto item : split(v, ',')) {
        if (item == "silent-host") {
            s.sim.deliver = [](std::span<const std::byte>) { return false; };
            continue;
        }
        // OP=ERRNO[@AFTER][xTIMES]
        const size_t eq = item.find('=');
        Fault f;
        bool ok = eq != std::string_view::npos;
        if (ok) {
            const std::string_view name = item.substr(0, eq);
            std::string_view rest = item.substr(eq + 1);
            ok = false;
            for (const auto& [n, op] : op_names)
                if (n == name) f.op = op, ok = true;
            if (const size_t x = rest.find('x'); ok && x != std::string_view::npos) {
                ok = number(rest.substr(x + 1), f.times) && f.times > 0;
                rest = rest.substr(0, x);
            }
            if (const size_t at = rest.find('@'); ok && at != std::string_view::npos) {
                ok = number(rest.substr(at + 1), f.after);
                rest = rest.substr(0, at);
            }
            f.err = ok ? errno_value(rest) : 0;
            ok = ok && f.err != 0;
        }
        if (!ok) {
            why = "APIR_VDRM_FAULT: '" + std::string(item) +
                  "' is not OP=ERRNO[@AFTER][xTIMES] (OP: open, close, version, getparam, "
                  "get_caps, context_init, create_blob, map, gem_close, execbuffer, mmap, "
                  "munmap) nor silent-host";
            return false;
        }
        s.faults.push_back(f);
    }
    return true;
}

const char* env(const char* name) {
    const char* v = std::getenv(name);
    return v && *v ? v : nullptr;
}

} // namespace

bool parse_config(std::string_view text, char sep, HostConfig& out, std::string& why) {
    auto r = parse_host_config(text, sep, out);
    if (!r) why = r.error().detail();
    return r.has_value();
}

bool read_settings(Settings& s, std::string& why) {
    s = Settings{};
    s.sim.nodes.front().bus = "pci " + s.device.pci_slot + " [1af4:1050]";
    LogLevel level = LogLevel::off;
    if (const char* v = env("APIR_VDRM_LOG")) {
        const auto l = parse_log_level(v);
        if (!l) {
            why = "APIR_VDRM_LOG: '" + std::string(v) + "' is not off, error, warn, info or debug";
            return false;
        }
        level = *l;
    }
    s.sim.host.logger = Logger(stderr_sink, level);
    if (const char* v = env("APIR_VDRM_BACKEND"))
        s.sim.host.config[std::string(config_library_path)] = v;
    if (const char* v = env("APIR_VDRM_CONFIG")) {
        if (!parse_config(v, ';', s.sim.host.config, why)) {
            why = "APIR_VDRM_CONFIG: " + why;
            return false;
        }
    }
    uint32_t apir_blob = 1;
    if (const char* v = env("APIR_VDRM_DEVICE"); v && !device(v, s, apir_blob, why)) return false;
    const SimConfig defaults;
    if (const char* v = env("APIR_VDRM_CAPSETS")) {
        if (!capsets(v, defaults, s.sim.capsets, apir_blob, why)) return false;
    } else if (apir_blob != 1) {
        if (!capsets("virgl2,venus,apir", defaults, s.sim.capsets, apir_blob, why)) return false;
    }
    return !(env("APIR_VDRM_FAULT") && !faults(env("APIR_VDRM_FAULT"), s, why));
}

} // namespace apir::vdrm
