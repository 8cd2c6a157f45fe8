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

Run probe(const std::string& args) {
    const auto start = std::chrono::steady_clock::now();
    Run r;
    const std::string cmd = std::string(APIR_PROBE_PATH) + " " + args + " 2>&1";
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
