// The transports the session suite runs over. Every session test runs once per
// entry: loopback inline, loopback threaded, and (when built) DRM on the simulated
// virtio-gpu device.
#pragma once

#include <apir/host.hpp>
#include <apir/loopback.hpp>
#include <apir/reply_page.hpp>
#include <apir/transport.hpp>

#include <functional>
#include <memory>
#include <span>
#include <string>
#include <utility>
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

/// Return false to drop a command (it never reaches the host, so it gets no reply).
using DeliverFn = std::function<bool(std::span<const std::byte>)>;

/// A loopback peer in front of this project's host that drops what `deliver` refuses:
/// a host that never answers some commands, for tests of the waits.
class DroppingHostPeer final : public apir::LoopbackPeer {
public:
    DroppingHostPeer(apir::HostOptions options, apir::HostMemory& memory, DeliverFn deliver)
        : inner_(apir::make_host_peer(std::move(options), memory)), deliver_(std::move(deliver)) {}
    void execute(std::span<const std::byte> cmd) override {
        if (!deliver_ || deliver_(cmd)) inner_->execute(cmd);
    }
    void execute_in_place(std::span<std::byte> cmd) override {
        if (!deliver_ || deliver_(cmd)) inner_->execute_in_place(cmd);
    }
    int32_t command_type_offset() const noexcept override { return inner_->command_type_offset(); }
    std::string explain(apir::CommandType type, const apir::Error& e) override {
        return inner_->explain(type, e);
    }

private:
    std::unique_ptr<apir::LoopbackPeer> inner_;
    DeliverFn deliver_;
};

/// A loopback link to this project's host (options.host) through a DroppingHostPeer.
inline apir::LoopbackLink dropping_loopback(apir::LoopbackOptions options, DeliverFn deliver) {
    return apir::LoopbackLink(
        [host = std::move(options.host), d = std::move(deliver)](apir::HostMemory& m) mutable {
            return std::make_unique<DroppingHostPeer>(std::move(host), m, std::move(d));
        },
        std::move(static_cast<apir::LoopbackLinkOptions&>(options)));
}

/// All transports of this build.
const std::vector<TestTransport>& test_transports();

/// Path of a test backend library built by tests/backends (by short name: "demo",
/// "failing", "missing-symbol", "not-a-library").
std::string backend_path(const std::string& name);

} // namespace apir_test
