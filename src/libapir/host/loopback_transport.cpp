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

LoopbackTransport::LoopbackTransport(LoopbackOptions options)
    : LoopbackLink(
          [host = std::move(options.host)](HostMemory& memory) mutable {
              return make_host_peer(std::move(host), memory);
          },
          std::move(static_cast<LoopbackLinkOptions&>(options))) {}

Host& LoopbackTransport::host() noexcept {
    // The peer is always a HostPeer: this constructor made it.
    return static_cast<HostPeer*>(peer())->host();
}

} // namespace apir
