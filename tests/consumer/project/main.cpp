// Uses apir through its public headers only: encodes a HANDSHAKE command, checks the
// bytes, decodes it back and judges a host's answer; then connects a loopback session to
// the demo backend that the subproject built for it (APIR_DEMO_BACKEND_PATH, from
// apir_demo_backend_dep). Exits non-zero on any mismatch.
#include <apir/apir.hpp>

#include <fmt/core.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

namespace {

int failures = 0;

void expect(bool ok, const char* what) {
    if (!ok) {
        fmt::print(stderr, "apir-consumer: FAILED: {}\n", what);
        ++failures;
    }
}

} // namespace

int main() {
    std::array<std::byte, 64> buf{};
    apir::Encoder enc(buf);
    apir::encode_command<apir::Handshake>(enc, 0, /*reply_res_id=*/7, apir::HandshakeRequest{});
    expect(enc.ok(), "the handshake fits its buffer");

    // type 0, flags 0, reply resource 7, guest version 0.2
    constexpr std::array<unsigned char, 20> golden = {0, 0, 0, 0, 0, 0, 0, 0, 7, 0,
                                                      0, 0, 0, 0, 0, 0, 2, 0, 0, 0};
    expect(enc.size() == golden.size() &&
               std::memcmp(enc.written().data(), golden.data(), golden.size()) == 0,
           "the handshake bytes match APIR 0.2");

    apir::Decoder dec(enc.written());
    auto type = static_cast<int32_t>(dec.read_u32());
    auto flags = dec.read_u32();
    auto reply_res_id = dec.read_u32();
    auto req = dec.get<apir::HandshakeRequest>();
    expect(req.has_value(), "the handshake decodes");
    expect(type == 0 && flags == 0 && reply_res_id == 7, "the header decodes");
    if (req) expect(req->major == 0 && req->minor == 2, "the guest version decodes");

    expect(apir::Handshake::check(apir::handshake_magic).has_value(), "the magic is success");
    auto refused = apir::Handshake::check(0);
    expect(!refused && refused.error().code() == apir::Errc::handshake_failed,
           "anything but the magic is HANDSHAKE_FAILED");

    // The backend the dependency names exists and loads.
    apir::LoopbackOptions lo;
    lo.host.config[std::string(apir::config_library_path)] = APIR_DEMO_BACKEND_PATH;
    apir::Session session(apir::LoopbackTransport(std::move(lo)));
    auto hello = session.connect();
    if (!hello) fmt::print(stderr, "apir-consumer: connect: {}\n", hello.error());
    expect(hello.has_value(), "a session loads the demo backend named by the dependency");

    if (failures != 0) return 1;
    fmt::print("apir-consumer: {} ({} bytes) encoded and decoded; a refusal reads \"{}\"; "
               "loaded {}\n",
               apir::command_type_name(type), enc.size(), refused.error(), APIR_DEMO_BACKEND_PATH);
    return 0;
}
