// apir-probe as a user runs it: loopback works here; drm fails cleanly where there is
// no virtio-gpu device.
#include "catch.hpp"

#include <apir/virtgpu.hpp>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <string>

#include <sys/wait.h>

namespace {

struct Run {
    int code = -1;
    std::string out;
    double seconds = 0;
};

Run probe_on(const std::string& program, const std::string& args) {
    const auto start = std::chrono::steady_clock::now();
    Run r;
    const std::string cmd = program + " " + args + " 2>&1";
    FILE* p = ::popen(cmd.c_str(), "r");
    REQUIRE(p);
    std::array<char, 4096> buf;
    size_t n;
    while ((n = std::fread(buf.data(), 1, buf.size(), p)) > 0)
        r.out.append(buf.data(), n);
    const int status = ::pclose(p);
    r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    return r;
}

Run probe(const std::string& args) {
    return probe_on(APIR_PROBE_PATH, args);
}

bool has(const Run& r, std::string_view s) {
    return r.out.find(s) != std::string::npos;
}

} // namespace

TEST_CASE("apir-probe --help lists the options and the exit codes", "[probe]") {
    auto r = probe("--help");
    CHECK(r.code == 0);
    CHECK(has(r, "--transport drm|loopback"));
    CHECK(has(r, "exit codes:"));
    CHECK(has(r, "64  bad command line"));
}

TEST_CASE("apir-probe refuses a bad command line with 64", "[probe]") {
    auto r = probe("--transport carrier-pigeon");
    CHECK(r.code == 64);
    CHECK(std::count(r.out.begin(), r.out.end(), '\n') == 1);
    CHECK(probe("--calls many").code == 64);
    CHECK(probe("--frobnicate").code == 64);
}

TEST_CASE("apir-probe --transport loopback handshakes, loads and times an echo", "[probe]") {
    auto r = probe("--transport loopback --calls 200");
    INFO(r.out);
    CHECK(r.code == 0);
    CHECK(has(r, "handshake: host APIR 0.2, guest 0.2"));
    CHECK(has(r, "load library: ok"));
    CHECK(has(r, "x200: mean"));
    CHECK(has(r, "result: ok"));

    auto j = probe("--transport loopback --calls 10 --json");
    INFO(j.out);
    CHECK(j.code == 0);
    CHECK(j.out.front() == '{');
    CHECK(has(j, "\"ok\": true"));
    CHECK(has(j, "\"exit_code\": 0"));
    CHECK(has(j, "\"calls\": 10"));
}

TEST_CASE("apir-probe --transport loopback with a missing backend exits 3", "[probe]") {
    auto r = probe("--transport loopback --backend /nonexistent/libnothing.so");
    INFO(r.out);
    CHECK(r.code == 3);
    CHECK(has(r, "LOADLIBRARY failed: LOAD_CANNOT_OPEN"));
}

TEST_CASE("apir-probe --transport drm without virtio-gpu: one line, non-zero, promptly",
          "[probe]") {
    const auto found = apir::discover_virtgpu();
    for (const auto& n : found.nodes)
        if (n.is_virtio_gpu()) {
            WARN("this machine has a virtio-gpu node: nothing to check here");
            return;
        }
    auto r = probe("--transport drm");
    INFO(r.out);
    CHECK(r.code == 1);
    CHECK(std::count(r.out.begin(), r.out.end(), '\n') == 1);
    CHECK(has(r, "apir-probe: no virtio-gpu device: NO_DEVICE"));
    CHECK(r.seconds < 5);

    auto j = probe("--transport drm --json");
    CHECK(j.code == 1);
    CHECK(has(j, "\"ok\": false"));
    CHECK(has(j, "\"failed_step\": \"discovery\""));
}

// The same probe on the virtual render node (libapir-vdrm.so), each machine made by
// the node's environment variables.
namespace {

Run probe_vdrm(const std::string& machine, const std::string& args) {
    std::string env =
        "LD_PRELOAD='" APIR_VDRM_PRELOAD "' APIR_VDRM_BACKEND=" APIR_DEMO_BACKEND_PATH;
    if (machine == "no-virtio") env += " APIR_VDRM_DEVICE=driver=i915";
    if (machine == "no-context-init") env += " APIR_VDRM_DEVICE=context_init=0";
    if (machine == "context-init-fails") env += " APIR_VDRM_FAULT=context_init=EINVAL";
    if (machine == "venus-only") env += " APIR_VDRM_CAPSETS=venus";
    if (machine == "silent-host") env += " APIR_VDRM_FAULT=silent-host";
    if (machine == "bad-config") env += " APIR_VDRM_FAULT=frobnicate";
    if (machine == "no-blob") env += " APIR_VDRM_DEVICE=blob=0";
    if (machine == "get-caps-fails") env += " APIR_VDRM_FAULT=get_caps=EIO";
    if (machine == "execbuffer-fails") env += " APIR_VDRM_FAULT=execbuffer=EINVAL";
    if (machine == "no-host-memory") env += " APIR_VDRM_FAULT=create_blob=ENOMEM";
    return probe_on("env -u " + std::string(apir::capset_env_var) + " " + env + " " APIR_PROBE_PATH,
                    args);
}

} // namespace

TEST_CASE("apir-probe on the virtual node lists it, its parameters, capsets and latencies",
          "[probe][vdrm]") {
    auto r = probe_vdrm("ok", "--transport drm --echo demo --calls 100");
    INFO(r.out);
    CHECK(r.code == 0);
    CHECK(has(r, "DRM render nodes: 1"));
    CHECK(has(r, "/dev/dri/renderD128 (pci 0000:00:02.0 [1af4:1050]): virtio_gpu 0.1.0: usable"));
    CHECK(has(r, "parameters: 3D_FEATURES=1 CAPSET_QUERY_FIX=1 RESOURCE_BLOB=1 HOST_VISIBLE=1 "
                 "CROSS_DEVICE=0 CONTEXT_INIT=1 SUPPORTED_CAPSET_IDs=0x414"));
    CHECK(has(r, "capsets offered: VIRGL2 (2), VENUS (4), APIR (10)"));
    CHECK(has(r, "capset: 10 (APIR), default: the device offers APIR; apir_version 1; blob "
                 "resources yes"));
    CHECK(has(r, "transport: virtgpu on /dev/dri/renderD128, capset 10 (APIR)"));
    CHECK(has(r, "handshake: host APIR 0.2, guest 0.2"));
    CHECK(has(r, "load library: ok"));
    CHECK(has(r, "echo (demo Echo) x100: mean"));
    CHECK(has(r, "result: ok"));

    auto h = probe_vdrm("ok", "--transport drm --calls 20 --json");
    INFO(h.out);
    CHECK(h.code == 0);
    CHECK(has(h, "\"kind\": \"HANDSHAKE\""));
    CHECK(has(h, "\"CONTEXT_INIT\": 1"));
    CHECK(has(h, "\"capsets_offered\": [2, 4, 10]"));
}

TEST_CASE("apir-probe exit codes on virtual nodes", "[probe][vdrm]") {
    struct Case {
        const char* machine;
        const char* args;
        int code;
        const char* says;
    };
    const Case cases[] = {
        {"no-virtio", "--transport drm", 1, "apir-probe: no virtio-gpu device: NO_DEVICE"},
        {"no-virtio", "--transport drm -v", 1, "i915 1.0.0: skipped: driven by i915"},
        {"no-context-init", "--transport drm", 2, "lacks CONTEXT_INIT"},
        {"context-init-fails", "--transport drm", 2, "result: open failed: UNSUPPORTED"},
        {"venus-only", "--transport drm --capset apir", 2, "does not offer capset 10 (APIR)"},
        {"venus-only", "--transport drm --echo demo --calls 10", 0, "capset 4 (VENUS)"},
        {"silent-host", "--transport drm --timeout-ms 100", 3, "handshake failed: TIMEOUT"},
        {"bad-config", "--transport drm", 1, "apir-vdrm: APIR_VDRM_FAULT: 'frobnicate' is not"},
        // The faults of the issue, each a named error of the transport.
        {"no-blob", "--transport drm", 2, "discovery failed: UNSUPPORTED"},
        {"no-blob", "--transport drm", 2, "lacks RESOURCE_BLOB"},
        {"get-caps-fails", "--transport drm", 2, "discovery failed: DISCONNECTED"},
        {"get-caps-fails", "--transport drm", 2,
         "VIRTGPU_GET_CAPS capset 10 (APIR) version 0 failed"},
        {"execbuffer-fails", "--transport drm", 3, "handshake failed: DEVICE_ERROR"},
        {"execbuffer-fails", "--transport drm", 3, "VIRTGPU_EXECBUFFER (20 bytes, ring 0) failed"},
        {"no-host-memory", "--transport drm", 3, "handshake failed: OUT_OF_MEMORY"},
    };
    for (const auto& k : cases) {
        auto r = probe_vdrm(k.machine, k.args);
        INFO(k.machine << " " << k.args << "\n" << r.out);
        CHECK(r.code == k.code);
        CHECK(has(r, k.says));
    }
}
