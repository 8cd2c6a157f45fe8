// The transports the session suite runs over. Every session test runs once per
// entry: loopback inline, loopback threaded, and (when built) DRM on the simulated
// virtio-gpu device.
#pragma once

#include <apir/host.hpp>
#include <apir/reply_page.hpp>
#include <apir/transport.hpp>

#include <functional>
#include <span>
#include <string>
#include <vector>

namespace apir_test {

struct TransportSetup {
    apir::HostOptions host;
    /// Return false to drop a command before the host sees it (a host that never answers).
    std::function<bool(std::span<const std::byte>)> deliver;
};

struct TestTransport {
    std::string name;
    std::function<apir::AnyTransport(TransportSetup)> make;
};

/// All transports of this build.
const std::vector<TestTransport>& test_transports();

/// Path of a test backend library built by tests/backends (by short name: "demo",
/// "failing", "missing-symbol", "not-a-library").
std::string backend_path(const std::string& name);

} // namespace apir_test
