// LoopbackTransport: the loopback link with this project's host at its other end.
//
// A LoopbackLink (apir/loopback_link.hpp, the transport layer) whose peer is an
// apir::Host built from LoopbackOptions::host; this composition belongs to the host
// layer, so that the transport layer does not depend on the host.
//
//     apir::LoopbackOptions opts;
//     opts.host.config["apir.load_library.path"] = "libmy-backend.so";
//     apir::Session<apir::LoopbackTransport> s(apir::LoopbackTransport(opts));
//     if (auto r = s.connect(); !r) fmt::print("{}\n", r.error());
#pragma once

#include "apir/export.hpp"
#include "apir/host.hpp"
#include "apir/loopback_link.hpp"

namespace apir {

/// The link's options (mode, limits) and the host's.
struct LoopbackOptions : LoopbackLinkOptions {
    HostOptions host;
};

/// This project's host as a loopback link's peer: what LoopbackTransport puts at the
/// other end, for a link that puts something of its own between (a test's decorator
/// that drops commands: apir::LoopbackLink(factory) with a peer wrapping this one).
[[nodiscard]] APIR_EXPORT std::unique_ptr<LoopbackPeer> make_host_peer(HostOptions options,
                                                                       HostMemory& memory);

namespace detail {
/// The host a LoopbackTransport made. A base constructed before the link, so that the
/// link's constructor, which makes the peer, can record it here.
struct LoopbackHostRef {
    Host* host_ = nullptr;
};
} // namespace detail

/// A moved-from LoopbackTransport fails every call with DISCONNECTED and is named
/// "moved-from" (host() must not be called on it).
class APIR_EXPORT LoopbackTransport final : private detail::LoopbackHostRef, public LoopbackLink {
public:
    explicit LoopbackTransport(LoopbackOptions options = {});

    /// The host at the other end.
    [[nodiscard]] Host& host() noexcept { return *host_; }
};

static_assert(Transport<LoopbackTransport>);

} // namespace apir
