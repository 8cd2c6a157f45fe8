// The DRM transport on this machine's real device. Exits 77 (skip) where there is no
// usable virtio-gpu node; inside a suitable VM it opens the transport and handshakes.
#include <apir/session.hpp>
#include <apir/virtgpu.hpp>

#include <fmt/core.h>

int main() {
    apir::VirtgpuOptions options;
    auto found = apir::discover_virtgpu(options);
    if (!found.usable()) {
        fmt::print("skip: {}\n", found.error ? found.error->message() : "no usable node");
        return 77;
    }
    auto t = apir::VirtgpuTransport::open(options);
    if (!t) {
        fmt::print("FAIL: open: {}\n", t.error());
        return 1;
    }
    const std::string node = t->device().node.path;
    apir::SessionOptions so;
    so.load_library = false; // the host's backend is not ours to choose
    apir::Session s(std::move(*t), so);
    auto hs = s.connect();
    if (!hs) {
        fmt::print("FAIL: handshake on {}: {}\n", node, hs.error());
        return 1;
    }
    fmt::print("ok: {} answers APIR {}.{}\n", node, hs->major, hs->minor);
    return 0;
}
