// apir-probe: what a user runs inside a VM to see whether APIR calls can reach the host,
// and what is wrong if not, before filing a bug. Run with --help.
#include <apir/apir.hpp>
#if APIR_HAVE_DRM
#include <apir/virtgpu.hpp>
#endif
#ifdef APIR_PROBE_HAVE_DEMO
#include "demo_protocol.hpp"
#endif

#include <fmt/core.h>

#include <algorithm>
#include <array>
#include <charconv>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <grp.h>
#include <limits.h>
#include <pwd.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <unistd.h>

namespace {

using namespace std::chrono;

// Exit codes (also in --help and docs/VM.md).
enum Exit : int {
    exit_ok = 0,
    exit_no_device = 1,
    exit_device_unusable = 2,
    exit_connect_failed = 3,
    exit_call_failed = 4,
    exit_usage = 64,
};

// The demo backend is installed beside the probe: <libdir>/apir/, found from the
// probe's own location (APIR_PROBE_BACKEND_RELDIR: from bindir to there), else at the
// configured install path (APIR_PROBE_BACKEND_DIR). APIR_PROBE_BACKEND overrides both.
constexpr const char* demo_backend_name = "libapir-demo-backend.so";

bool is_file(const std::string& path) {
    struct stat st {};
    return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

std::string default_backend() {
    if (const char* env = std::getenv("APIR_PROBE_BACKEND"); env && *env) return env;
    std::vector<std::string> candidates;
#ifdef APIR_PROBE_BACKEND_RELDIR
    std::array<char, PATH_MAX> exe{};
    const ssize_t n = ::readlink("/proc/self/exe", exe.data(), exe.size() - 1);
    if (n > 0) {
        std::string dir(exe.data(), static_cast<size_t>(n));
        dir.resize(dir.rfind('/') + 1);
        candidates.push_back(dir + APIR_PROBE_BACKEND_RELDIR "/" + demo_backend_name);
    }
#endif
#ifdef APIR_PROBE_BACKEND_DIR
    candidates.push_back(std::string(APIR_PROBE_BACKEND_DIR "/") + demo_backend_name);
#endif
    for (const auto& c : candidates) {
        if (!is_file(c)) continue;
        std::array<char, PATH_MAX> real{};
        return ::realpath(c.c_str(), real.data()) ? std::string(real.data()) : c;
    }
    // Not installed: LOADLIBRARY then names the path it tried.
    return candidates.empty() ? demo_backend_name : candidates.back();
}

void usage() {
    fmt::print(
        "usage: apir-probe [options]\n"
        "\n"
        "Checks that APIR calls reach the host: lists the DRM render nodes and why each is\n"
        "skipped, the virtio-gpu parameters and capsets, then handshakes, loads the backend\n"
        "library and times a series of echo calls.\n"
        "\n"
        "options:\n"
        "  --transport drm|loopback|vtest  drm: the virtio-gpu device of this VM (default);\n"
        "                            loopback: an in-process host (checks the library itself);\n"
        "                            vtest: virglrenderer's host behind virgl_test_server\n"
        "  --vtest-socket PATH       vtest: the server's socket (default: $VTEST_SOCKET_NAME,\n"
        "                            else /tmp/.virgl_test); the server's environment names\n"
        "                            the backend library\n"
        "  --capset auto|apir|venus  virtio-gpu capset (default auto: APIR if\n"
        "                            GGML_REMOTING_USE_APIR_CAPSET is set or the device offers\n"
        "                            it, else Venus transition mode)\n"
        "  --node PATH               use this render node (default: the first usable one)\n"
        "  --backend PATH            loopback: the APIR backend library the host loads\n"
        "                            (default: $APIR_PROBE_BACKEND, else the installed demo\n"
        "                            backend, here {})\n"
        "  --config KEY=VALUE        loopback: host configuration, repeatable\n"
        "                            (e.g. ggml.library.path=/usr/lib/libggml-vulkan.so)\n"
        "  --echo demo|handshake|none  the timed call: demo's Echo (the host must run the demo\n"
        "                            backend), HANDSHAKE (any host), or none (default: demo on\n"
        "                            loopback, handshake on drm)\n"
        "  --calls N                 number of timed calls (default 1000)\n"
        "  --no-load                 skip LOADLIBRARY\n"
        "  --timeout-ms N            deadline of each call (default 2000; LOADLIBRARY: 60000)\n"
        "  --json                    one JSON object on stdout instead of text\n"
        "  -v, --verbose             log what the transport and the host do; list every node\n"
        "  -h, --help                this text\n"
        "\n"
        "exit codes:\n"
        "  0   everything worked\n"
        "  1   no virtio-gpu device (no DRM node, wrong driver, permission denied)\n"
        "  2   a virtio-gpu device is there but unusable (parameter, capset or context)\n"
        "  3   handshake or LOADLIBRARY failed\n"
        "  4   a timed call failed\n"
        "  64  bad command line\n",
        default_backend());
}

// --- A little JSON: enough for one flat report.

std::string quote(std::string_view s) {
    std::string out = "\"";
    for (unsigned char c : s) {
        switch (c) {
        case '"':
            out += "\\\"";
            break;
        case '\\':
            out += "\\\\";
            break;
        case '\n':
            out += "\\n";
            break;
        case '\t':
            out += "\\t";
            break;
        default:
            if (c < 0x20)
                out += fmt::format("\\u{:04x}", c);
            else
                out += static_cast<char>(c);
        }
    }
    return out + "\"";
}

class JsonObject {
public:
    JsonObject& raw(std::string_view key, std::string value) {
        fields_.emplace_back(std::string(key), std::move(value));
        return *this;
    }
    JsonObject& str(std::string_view key, std::string_view v) { return raw(key, quote(v)); }
    template <class N>
    JsonObject& num(std::string_view key, N v) {
        return raw(key, fmt::format("{}", v));
    }
    /// A duration or rate, rounded to `digits` decimals.
    JsonObject& fixed(std::string_view key, double v, int digits) {
        return raw(key, fmt::format("{:.{}f}", v, digits));
    }
    JsonObject& boolean(std::string_view key, bool v) { return raw(key, v ? "true" : "false"); }
    [[nodiscard]] std::string dump() const {
        std::string s = "{";
        for (size_t i = 0; i < fields_.size(); ++i)
            s += fmt::format("{}{}: {}", i ? ", " : "", quote(fields_[i].first), fields_[i].second);
        return s + "}";
    }

private:
    std::vector<std::pair<std::string, std::string>> fields_;
};

[[maybe_unused]] std::string json_array(const std::vector<std::string>& items) {
    std::string s = "[";
    for (size_t i = 0; i < items.size(); ++i)
        s += (i ? ", " : "") + items[i];
    return s + "]";
}

// What a bug report needs about this machine and this build.
std::string json_system() {
    JsonObject j;
    if (struct utsname u{}; ::uname(&u) == 0)
        j.str("kernel", u.sysname).str("kernel_release", u.release).str("machine", u.machine);
    const uid_t uid = ::getuid();
    const passwd* pw = ::getpwuid(uid);
    j.num("uid", uid).str("user", pw ? pw->pw_name : "");
    std::vector<gid_t> gids(static_cast<size_t>(std::max(::getgroups(0, nullptr), 0)) + 1);
    const int ng = ::getgroups(static_cast<int>(gids.size()), gids.data());
    gids.resize(static_cast<size_t>(std::max(ng, 0)));
    if (std::find(gids.begin(), gids.end(), ::getgid()) == gids.end()) gids.push_back(::getgid());
    std::vector<std::string> groups;
    for (gid_t g : gids) {
        const group* gr = ::getgrgid(g);
        groups.push_back(quote(gr ? gr->gr_name : std::to_string(g)));
    }
    return j.raw("groups", json_array(groups)).dump();
}

std::string json_build() {
    JsonObject j;
    j.str("version", APIR_PROBE_VERSION).str("compiler", __VERSION__);
#if APIR_HAVE_DRM
    j.boolean("drm_transport", true).str("libdrm", APIR_PROBE_LIBDRM_VERSION);
#else
    j.boolean("drm_transport", false).raw("libdrm", "null");
#endif
#ifdef APIR_PROBE_HAVE_DEMO
    j.boolean("demo_protocol", true);
#else
    j.boolean("demo_protocol", false);
#endif
    return j.str("fmt", APIR_PROBE_FMT_VERSION).dump();
}

std::string json_error(const apir::Error& e) {
    return JsonObject()
        .str("name", e.name())
        .str("category", apir::category_name(e.category()))
        .num("errno", e.sys_errno())
        .str("message", e.message())
        .dump();
}

// --- Arguments.

enum class TransportKind { drm, loopback, vtest };
enum class EchoKind { automatic, demo, handshake, none };

struct Args {
    TransportKind transport = TransportKind::drm;
    std::string capset = "auto";
    std::string node;
    std::string vtest_socket;
    std::string backend;
    std::vector<std::pair<std::string, std::string>> config;
    EchoKind echo = EchoKind::automatic;
    size_t calls = 1000;
    bool load = true;
    uint32_t timeout_ms = 2000;
    bool json = false;
    bool verbose = false;
};

[[noreturn]] void bad_usage(std::string_view why) {
    fmt::print(stderr, "apir-probe: {}; see apir-probe --help\n", why);
    std::exit(exit_usage);
}

template <class N>
N parse_number(std::string_view flag, std::string_view v) {
    N n{};
    auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
    if (ec != std::errc{} || p != v.data() + v.size())
        bad_usage(fmt::format("{} wants a number, not '{}'", flag, v));
    return n;
}

Args parse(int argc, char** argv) {
    Args a;
    for (int i = 1; i < argc; ++i) {
        std::string_view f = argv[i];
        auto value = [&]() -> std::string_view {
            if (i + 1 >= argc) bad_usage(fmt::format("{} needs a value", f));
            return argv[++i];
        };
        if (f == "-h" || f == "--help") {
            usage();
            std::exit(exit_ok);
        } else if (f == "--transport") {
            auto v = value();
            if (v == "drm")
                a.transport = TransportKind::drm;
            else if (v == "loopback")
                a.transport = TransportKind::loopback;
            else if (v == "vtest")
                a.transport = TransportKind::vtest;
            else
                bad_usage(fmt::format("unknown transport '{}' (drm, loopback or vtest)", v));
        } else if (f == "--vtest-socket") {
            a.vtest_socket = value();
        } else if (f == "--capset") {
            auto v = value();
            if (v != "auto" && v != "apir" && v != "venus")
                bad_usage(fmt::format("unknown capset '{}' (auto, apir or venus)", v));
            a.capset = v;
        } else if (f == "--node") {
            a.node = value();
        } else if (f == "--backend") {
            a.backend = value();
        } else if (f == "--config") {
            auto v = value();
            auto eq = v.find('=');
            if (eq == std::string_view::npos || eq == 0)
                bad_usage(fmt::format("--config wants KEY=VALUE, not '{}'", v));
            a.config.emplace_back(std::string(v.substr(0, eq)), std::string(v.substr(eq + 1)));
        } else if (f == "--echo") {
            auto v = value();
            if (v == "demo")
                a.echo = EchoKind::demo;
            else if (v == "handshake")
                a.echo = EchoKind::handshake;
            else if (v == "none")
                a.echo = EchoKind::none;
            else
                bad_usage(fmt::format("unknown echo '{}' (demo, handshake or none)", v));
        } else if (f == "--calls") {
            a.calls = parse_number<size_t>(f, value());
        } else if (f == "--no-load") {
            a.load = false;
        } else if (f == "--timeout-ms") {
            a.timeout_ms = parse_number<uint32_t>(f, value());
        } else if (f == "--json") {
            a.json = true;
        } else if (f == "-v" || f == "--verbose") {
            a.verbose = true;
        } else {
            bad_usage(fmt::format("unknown option '{}'", f));
        }
    }
    if (a.backend.empty()) a.backend = default_backend();
    if (a.echo == EchoKind::automatic)
        a.echo =
            a.transport == TransportKind::loopback && a.load ? EchoKind::demo : EchoKind::handshake;
#ifndef APIR_PROBE_HAVE_DEMO
    if (a.echo == EchoKind::demo)
        bad_usage("this build has no demo protocol: use --echo handshake");
#endif
    if (a.echo == EchoKind::demo && !a.load)
        bad_usage("--echo demo needs LOADLIBRARY: drop --no-load");
    return a;
}

// --- The probe.

class Probe {
public:
    explicit Probe(Args a) : args_(std::move(a)) {}

    int run() {
        report_.str("probe", "apir-probe").str("version", APIR_PROBE_VERSION);
        report_.raw("build", json_build()).raw("system", json_system());
        report_.str("transport", args_.transport == TransportKind::drm     ? "drm"
                                 : args_.transport == TransportKind::vtest ? "vtest"
                                                                           : "loopback");
        std::optional<apir::AnyTransport> transport;
        if (args_.transport == TransportKind::drm) {
            if (int code = open_drm(transport); code != exit_ok) return code;
        } else if (args_.transport == TransportKind::vtest) {
            if (int code = open_vtest(transport); code != exit_ok) return code;
        } else {
            open_loopback(transport);
        }
        return talk(std::move(*transport));
    }

private:
    [[nodiscard]] apir::Logger logger() const {
        return apir::Logger(apir::stderr_sink,
                            args_.verbose ? apir::LogLevel::debug : apir::LogLevel::off);
    }

    void say(std::string_view line) const {
        if (!args_.json && !quiet_) fmt::print("{}\n", line);
    }

    int finish(int code, const apir::Error* error, std::string_view what) {
        report_.boolean("ok", code == exit_ok).num("exit_code", code);
        if (error) report_.raw("error", json_error(*error)).str("failed_step", what);
        if (args_.json)
            fmt::print("{}\n", report_.dump());
        else if (error)
            fmt::print("result: {} failed: {}\n", what, *error);
        else
            fmt::print("result: ok\n");
        return code;
    }

    int open_vtest(std::optional<apir::AnyTransport>& out) {
        apir::VtestOptions vo;
        vo.socket_path = args_.vtest_socket;
        vo.logger = logger();
        vo.connect_timeout = milliseconds(args_.timeout_ms);
        const auto t0 = steady_clock::now();
        auto t = apir::VtestTransport::open(std::move(vo));
        if (!t)
            return finish(t.error() == apir::Errc::no_device ? exit_no_device
                                                             : exit_device_unusable,
                          &t.error(), "vtest open");
        const double ms = duration<double, std::milli>(steady_clock::now() - t0).count();
        report_.str("vtest_socket", t->socket_path()).num("vtest_protocol", t->protocol_version());
        say(fmt::format("transport: vtest at {} (protocol {}, capset 10), opened in {:.1f} ms",
                        t->socket_path(), t->protocol_version(), ms));
        out.emplace(std::move(*t));
        return exit_ok;
    }

    void open_loopback(std::optional<apir::AnyTransport>& out) {
        apir::LoopbackOptions lo;
        lo.host.config[std::string(apir::config_library_path)] = args_.backend;
        for (auto& [k, v] : args_.config)
            lo.host.config[k] = v;
        lo.host.logger = logger();
        report_.str("backend", args_.backend);
        say(fmt::format("transport: loopback (in-process host), backend {}", args_.backend));
        out.emplace(apir::LoopbackTransport(std::move(lo)));
    }

#if APIR_HAVE_DRM
    static std::string version_of(const apir::VirtgpuNodeReport& n) {
        return fmt::format("{}.{}.{}", n.driver_major, n.driver_minor, n.driver_patch);
    }

    void describe(const apir::VirtgpuNodeReport& n, std::vector<std::string>& json_nodes) const {
        JsonObject j;
        j.str("path", n.node.path).str("bus", n.node.bus).str("driver", n.driver);
        j.str("driver_version", version_of(n)).boolean("usable", n.usable());
        std::string head = fmt::format("  {}{}: ", n.node.path,
                                       n.node.bus.empty() ? "" : fmt::format(" ({})", n.node.bus));
        if (!n.driver.empty()) head += fmt::format("{} {}: ", n.driver, version_of(n));
        say(head + (n.usable() ? "usable" : fmt::format("skipped: {}", n.error->detail())));
        if (!n.params.empty()) {
            JsonObject params;
            std::string line;
            for (const auto& p : n.params) {
                const bool mask = p.id == 7;
                std::string v = p.error ? fmt::format("unknown ({})", strerrorname_np(p.error))
                                : mask  ? fmt::format("{:#x}", p.value)
                                        : fmt::format("{}", p.value);
                line += fmt::format(" {}={}", p.name, v);
                if (p.error)
                    params.raw(p.name, "null");
                else
                    params.num(p.name, p.value);
            }
            say(fmt::format("      parameters:{}", line));
            j.raw("params", params.dump());
            std::vector<std::string> missing;
            for (auto m : n.missing)
                missing.push_back(quote(m));
            j.raw("missing", json_array(missing));
            std::vector<std::string> offered, names;
            for (uint32_t id : n.offered_capsets()) {
                offered.push_back(fmt::format("{}", id));
                names.push_back(fmt::format("{} ({})", apir::capset_name(id), id));
            }
            j.raw("capsets_offered", json_array(offered));
            std::string list;
            for (auto& s : names)
                list += (list.empty() ? "" : ", ") + s;
            say(fmt::format("      capsets offered: {}", list.empty() ? "unknown" : list));
        }
        if (n.capset) {
            const auto& c = *n.capset;
            // Only the APIR capset's first word is a version; Venus data is laid out otherwise.
            const std::string version =
                c.id == apir::capset_apir ? fmt::format("; apir_version {}", c.apir_version) : "";
            const std::string blobs =
                !c.queried ? std::string("not queried")
                : c.error
                    ? fmt::format("GET_CAPS failed ({})", strerrorname_np(c.error))
                    : fmt::format("blob resources {}", c.supports_blob_resources ? "yes" : "no");
            say(fmt::format("      capset: {} ({}), {}{}; {}", c.id, apir::capset_name(c.id),
                            c.reason, version, blobs));
            j.raw("capset", JsonObject()
                                .num("id", c.id)
                                .str("name", apir::capset_name(c.id))
                                .str("reason", c.reason)
                                .boolean("queried", c.queried)
                                .num("errno", c.error)
                                .num("apir_version", c.apir_version)
                                .num("supports_blob_resources", c.supports_blob_resources)
                                .dump());
        }
        if (n.error) j.raw("skipped", json_error(*n.error));
        json_nodes.push_back(j.dump());
    }

    int open_drm(std::optional<apir::AnyTransport>& out) {
        apir::VirtgpuOptions o;
        o.capset = args_.capset == "apir"    ? apir::CapsetChoice::apir
                   : args_.capset == "venus" ? apir::CapsetChoice::venus
                                             : apir::CapsetChoice::automatic;
        o.node = args_.node;
        o.logger = logger();
        report_.str("capset_option", args_.capset)
            .boolean("capset_env_set", std::getenv(apir::capset_env_var) != nullptr);

        const auto found = apir::discover_virtgpu(o);
        const bool any_virtio = std::any_of(found.nodes.begin(), found.nodes.end(),
                                            [](const auto& n) { return n.is_virtio_gpu(); });
        std::vector<std::string> nodes;
        if (!any_virtio && !args_.verbose) {
            // Not a VM with virtio-gpu: one line says so.
            for (const auto& n : found.nodes)
                describe_quietly(n, nodes);
            report_.raw("nodes", json_array(nodes));
            const apir::Error& e = *found.error;
            report_.boolean("ok", false).num("exit_code", int(exit_no_device));
            report_.raw("error", json_error(e)).str("failed_step", "discovery");
            if (args_.json)
                fmt::print("{}\n", report_.dump());
            else
                fmt::print("apir-probe: no virtio-gpu device: {}\n", e);
            return exit_no_device;
        }
        say(fmt::format("DRM render nodes: {}", found.nodes.size()));
        for (const auto& n : found.nodes)
            describe(n, nodes);
        report_.raw("nodes", json_array(nodes));
        if (!found.usable())
            return finish(any_virtio ? exit_device_unusable : exit_no_device, &*found.error,
                          "discovery");

        auto t = apir::VirtgpuTransport::open(o);
        if (!t) return finish(exit_device_unusable, &t.error(), "open");
        say(fmt::format("transport: {} on {}, capset {} ({}), command-type offset {}", t->name(),
                        t->device().node.path, t->capset_id(), apir::capset_name(t->capset_id()),
                        t->command_type_offset()));
        report_.str("node", t->device().node.path)
            .num("capset", t->capset_id())
            .num("command_type_offset", t->command_type_offset());
        out.emplace(std::move(*t));
        return exit_ok;
    }

    void describe_quietly(const apir::VirtgpuNodeReport& n, std::vector<std::string>& nodes) {
        quiet_ = true; // collect for JSON without printing
        describe(n, nodes);
        quiet_ = false;
    }
#else
    int open_drm(std::optional<apir::AnyTransport>&) {
        const apir::Error e(apir::Errc::unsupported,
                            "this build has no DRM transport (built without libdrm)");
        if (!args_.json) {
            fmt::print("apir-probe: no virtio-gpu device: {}\n", e);
            return exit_no_device;
        }
        return finish(exit_no_device, &e, "discovery");
    }
#endif

    struct Latency {
        std::vector<double> us;
        [[nodiscard]] double at(double q) {
            if (us.empty()) return 0;
            std::sort(us.begin(), us.end());
            return us[static_cast<size_t>(q * static_cast<double>(us.size() - 1))];
        }
        [[nodiscard]] double mean() const {
            double s = 0;
            for (double v : us)
                s += v;
            return us.empty() ? 0 : s / static_cast<double>(us.size());
        }
    };

    static double micros(apir::Clock::duration d) {
        return duration<double, std::micro>(d).count();
    }

    int talk(apir::AnyTransport transport) {
        apir::SessionOptions so;
        so.handshake_timeout = milliseconds(args_.timeout_ms);
        so.forward_timeout = milliseconds(args_.timeout_ms);
        so.load_library = false; // timed on its own below
        so.logger = logger();
        apir::Session s(std::move(transport), so);

        auto t0 = apir::Clock::now();
        auto hs = s.connect();
        auto took = apir::Clock::now() - t0;
        if (!hs) return finish(exit_connect_failed, &hs.error(), "handshake");
        const bool minor_differs = hs->minor != apir::protocol_minor;
        say(fmt::format("handshake: host APIR {}.{}, guest {}.{}, {:.0f} µs{}", hs->major,
                        hs->minor, apir::protocol_major, apir::protocol_minor, micros(took),
                        minor_differs ? " (minor versions differ: only a warning)" : ""));
        report_.raw("handshake", JsonObject()
                                     .num("host_major", hs->major)
                                     .num("host_minor", hs->minor)
                                     .num("guest_major", apir::protocol_major)
                                     .num("guest_minor", apir::protocol_minor)
                                     .fixed("us", micros(took), 1)
                                     .dump());

        if (args_.load) {
            apir::CallOptions co;
            co.deadline =
                apir::Deadline::after(milliseconds(apir::default_load_library_timeout_ms));
            t0 = apir::Clock::now();
            auto ll = s.call<apir::LoadLibrary>(apir::Empty{}, co);
            took = apir::Clock::now() - t0;
            if (!ll) return finish(exit_connect_failed, &ll.error(), "LOADLIBRARY");
            say(fmt::format("load library: ok, {:.1f} ms", micros(took) / 1000));
            report_.raw("load_library", JsonObject().fixed("ms", micros(took) / 1000, 2).dump());
        }

        if (args_.echo == EchoKind::none || args_.calls == 0) return finish(exit_ok, nullptr, "");
        const std::string_view kind = args_.echo == EchoKind::demo ? "demo Echo" : "HANDSHAKE";
        Latency lat;
        lat.us.reserve(args_.calls);
        for (size_t i = 0; i < args_.calls; ++i) {
            t0 = apir::Clock::now();
            if (auto r = echo(s, i); !r) return finish(exit_call_failed, &r.error(), "echo");
            lat.us.push_back(micros(apir::Clock::now() - t0));
        }
        const double mean = lat.mean(), p50 = lat.at(0.5), p99 = lat.at(0.99), mx = lat.at(1.0),
                     mn = lat.at(0.0);
        say(fmt::format("echo ({}) x{}: mean {:.1f} µs, min {:.1f}, p50 {:.1f}, p99 {:.1f}, max "
                        "{:.1f}",
                        kind, args_.calls, mean, mn, p50, p99, mx));
        report_.raw("echo", JsonObject()
                                .str("kind", kind)
                                .num("calls", args_.calls)
                                .fixed("mean_us", mean, 1)
                                .fixed("min_us", mn, 1)
                                .fixed("p50_us", p50, 1)
                                .fixed("p99_us", p99, 1)
                                .fixed("max_us", mx, 1)
                                .dump());
        return finish(exit_ok, nullptr, "");
    }

    apir::Expected<void> echo(apir::Session<apir::AnyTransport>& s, size_t i) {
#ifdef APIR_PROBE_HAVE_DEMO
        if (args_.echo == EchoKind::demo) {
            const std::string text = "apir-probe " + std::to_string(i);
            auto r = s.call<demo::Echo>(demo::EchoRequest{i, text});
            if (!r) return apir::Unexpected{std::move(r).error()};
            if (r->tag != i || r->text != text)
                return apir::fail(apir::Errc::decode_bad_value, "the echo came back different");
            return {};
        }
#endif
        (void)i;
        auto r = s.call<apir::Handshake>(apir::HandshakeRequest{});
        if (!r) return apir::Unexpected{std::move(r).error()};
        return {};
    }

    Args args_;
    JsonObject report_;
    bool quiet_ = false;
};

} // namespace

int main(int argc, char** argv) {
    return Probe(parse(argc, argv)).run();
}
