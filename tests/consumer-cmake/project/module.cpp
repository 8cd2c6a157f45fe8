// A shared module that uses apir inside: one exported C function handshakes with an
// in-process host. Only that function is meant to be visible outside.
#include <apir/apir.hpp>

extern "C" __attribute__((visibility("default"))) int consumer_module_handshake() {
    apir::SessionOptions so;
    so.load_library = false;
    apir::Session session(apir::LoopbackTransport(apir::LoopbackOptions{}), so);
    auto hs = session.connect();
    return hs && hs->major == apir::protocol_major ? 0 : 1;
}
