// Must not compile: an Add call given an Echo request. The test expects the
// session's static_assert message, not some unrelated error.
#include <apir/loopback.hpp>
#include <apir/session.hpp>

#include "demo_protocol.hpp"

int main() {
    apir::Session s(apir::LoopbackTransport{});
    auto r = s.call<demo::Add>(demo::EchoRequest{});
    return r ? 0 : 1;
}
