// A tour of the wire layer: encode a HANDSHAKE command, print its bytes, decode it back.
#include <apir/apir.hpp>

#include <array>
#include <fmt/core.h>

int main() {
    std::array<std::byte, 64> buf{};
    apir::Encoder enc(buf);
    apir::encode_command<apir::Handshake>(enc, 0, /*reply_res_id=*/7, apir::HandshakeRequest{});
    if (!enc.ok()) {
        fmt::print("{}\n", enc.status().error());
        return 1;
    }
    fmt::print("HANDSHAKE command, {} bytes:\n ", enc.size());
    for (auto b : enc.written())
        fmt::print(" {:02x}", static_cast<unsigned>(b));
    fmt::print("\n");

    apir::Decoder dec(enc.written());
    auto type = static_cast<int32_t>(dec.read_u32());
    auto flags = dec.read_u32();
    auto reply = dec.read_u32();
    auto req = dec.get<apir::HandshakeRequest>();
    if (!req) {
        fmt::print("{}\n", req.error());
        return 1;
    }
    fmt::print("decoded: type {} ({}), flags {}, reply resource {}, guest version {}.{}\n", type,
               apir::command_type_name(type), flags, reply, req->major, req->minor);
}
