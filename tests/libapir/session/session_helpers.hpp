// Sessions over the suite's transports, set up the way the session tests need them.
#pragma once

#include "catch.hpp"
#include "test_transports.hpp"

#include <apir/loopback.hpp>
#include <apir/session.hpp>

#include <functional>
#include <map>
#include <memory>
#include <string>

namespace apir_test {

using Session = apir::Session<apir::AnyTransport>;

struct Setup {
    std::string backend = "demo";
    std::map<std::string, std::string> config;
    uint32_t host_major = apir::protocol_major;
    uint32_t host_minor = apir::protocol_minor;
    std::function<bool(std::span<const std::byte>)> deliver;
    apir::SessionOptions session;
    /// Whether the host offers backends the sized shared-memory look-up.
    bool offer_sized_shmem = true;
};

inline apir::Logger quiet() {
    return apir::Logger(nullptr);
}

inline apir::SessionOptions quiet_session() {
    apir::SessionOptions s;
    s.logger = quiet();
    return s;
}

/// Loopback options whose host loads the demo backend and logs nothing.
inline apir::LoopbackOptions loopback_options(apir::LoopbackOptions::Mode mode) {
    apir::LoopbackOptions o;
    o.mode = mode;
    o.host.config[std::string(apir::config_library_path)] = backend_path("demo");
    o.host.logger = quiet();
    return o;
}

inline TransportSetup transport_setup(const Setup& s) {
    TransportSetup ts;
    ts.host.config[std::string(apir::config_library_path)] = backend_path(s.backend);
    for (auto& [k, v] : s.config)
        ts.host.config[k] = v;
    ts.host.version_major = s.host_major;
    ts.host.version_minor = s.host_minor;
    ts.host.offer_sized_shmem = s.offer_sized_shmem;
    ts.host.logger = quiet();
    ts.deliver = s.deliver;
    return ts;
}

inline std::unique_ptr<Session> open(const TestTransport& t, Setup s = {}) {
    if (!s.session.logger.enabled(apir::LogLevel::error)) s.session.logger = quiet();
    return std::make_unique<Session>(t.make(transport_setup(s)), s.session);
}

inline std::unique_ptr<Session> connected(const TestTransport& t, Setup s = {}) {
    auto session = open(t, std::move(s));
    auto c = session->connect();
    INFO((c ? std::string("connected") : c.error().message()));
    REQUIRE(c);
    return session;
}

/// Drops FORWARD commands (type 2, or 2 + 331): the host never sees them.
inline bool drop_forward(std::span<const std::byte> cmd) {
    apir::Decoder d(cmd);
    auto type = static_cast<int32_t>(d.read_u32());
    return type != 2 && type != 2 + apir::venus_command_offset;
}

} // namespace apir_test
