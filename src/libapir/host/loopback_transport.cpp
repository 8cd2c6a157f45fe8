// LoopbackTransport: the loopback link with apir::Host as its peer.
#include "apir/loopback.hpp"

namespace apir {
namespace {

// The host as a loopback link's peer.
class HostPeer final : public LoopbackPeer {
public:
    HostPeer(HostOptions options, HostMemory& memory)
        : type_offset_(options.command_type_offset), host_(std::move(options), memory) {}

    // A dropped command simply gets no reply.
    void execute(std::span<const std::byte> command) override { (void)host_.execute(command); }
    void execute_in_place(std::span<std::byte> command) override {
        (void)host_.execute_in_place(command);
    }
    int32_t command_type_offset() const noexcept override { return type_offset_; }
    // Why LOADLIBRARY failed, which its return code cannot say.
    std::string explain(CommandType type, const Error&) override {
        return type == CommandType::load_library ? host_.load_library_failure() : std::string();
    }

    Host& host() noexcept { return host_; }

private:
    int32_t type_offset_;
    Host host_;
};

} // namespace

std::unique_ptr<LoopbackPeer> make_host_peer(HostOptions options, HostMemory& memory) {
    return std::make_unique<HostPeer>(std::move(options), memory);
}

// The link calls the factory in its constructor only, so `this` (whose LoopbackHostRef
// base is already constructed) is the transport being built.
LoopbackTransport::LoopbackTransport(LoopbackOptions options)
    : LoopbackLink(
          [this, host = std::move(options.host)](
              HostMemory& memory) mutable -> std::unique_ptr<LoopbackPeer> {
              auto peer = std::make_unique<HostPeer>(std::move(host), memory);
              host_ = &peer->host();
              return peer;
          },
          std::move(static_cast<LoopbackLinkOptions&>(options))) {}

} // namespace apir
