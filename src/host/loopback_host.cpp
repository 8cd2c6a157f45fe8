// LoopbackTransport: the loopback link with apir::Host as its peer.
#include "apir/loopback.hpp"

namespace apir {
namespace {

// The host as a loopback link's peer.
class HostPeer final : public LoopbackPeer {
public:
    HostPeer(HostOptions options, HostMemory& memory)
        : type_offset_(options.command_type_offset), host_(std::move(options), memory) {}

    void execute(std::span<const std::byte> command) override {
        (void)host_.execute(command); // a dropped command simply gets no reply
    }
    int32_t command_type_offset() const noexcept override { return type_offset_; }
    std::string load_library_failure() override { return host_.load_library_failure(); }

    Host& host() noexcept { return host_; }

private:
    int32_t type_offset_;
    Host host_;
};

} // namespace

LoopbackTransport::LoopbackTransport(LoopbackOptions options)
    : LoopbackLink(
          [host = std::move(options.host)](HostMemory& memory) mutable {
              return std::make_unique<HostPeer>(std::move(host), memory);
          },
          std::move(static_cast<LoopbackLinkOptions&>(options))) {}

Host& LoopbackTransport::host() noexcept {
    // The peer is always a HostPeer: this constructor made it.
    return static_cast<HostPeer*>(peer())->host();
}

} // namespace apir
