// HostMemory: what a transport offers the host at its other end.
//
// A host (apir::Host) finds guest memory by resource id and tells the guest that a
// reply is ready through this interface. The transports whose host runs in this
// process implement it: the loopback link (apir/loopback_link.hpp) and the simulated
// virtio-gpu device (apir/sim/sim_device.hpp); tests implement it to feed a host directly.
#pragma once

#include "apir/reply_page.hpp"

#include <cstddef>
#include <cstdint>
#include <span>

namespace apir {

class HostMemory {
public:
    /// The mapping of a shared-memory resource (its full size), or empty if unknown.
    virtual std::span<std::byte> resource(uint32_t res_id) noexcept = 0;
    /// Stores (code + 1) into the page's notification word, after the reply payload,
    /// and wakes the guest if it waits blocked. The default suits a guest that polls.
    virtual void notify(std::span<std::byte> page, uint32_t code) noexcept {
        notify_reply(page, code, nullptr);
    }

protected:
    ~HostMemory() = default;
};

} // namespace apir
