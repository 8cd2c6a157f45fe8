// Typed calls (apir/call.hpp): the command buffer a call puts on the wire, and how
// each command type's return code becomes success or a named error.
#include "wire_test.hpp"

#include <apir/call.hpp>

#include <array>
#include <cstdint>
#include <string>
#include <type_traits>

using apir::Errc;
using apir_test::bytes;
using apir_test::hex;

namespace {

struct AddRequest {
    int32_t a = 0;
    int32_t b = 0;
    static constexpr auto wire_fields = apir::fields(&AddRequest::a, &AddRequest::b);
};
struct AddReply {
    int64_t sum = 0;
    static constexpr auto wire_fields = apir::fields(&AddReply::sum);
};
using Add = apir::Forward<42, AddRequest, AddReply>;
using Ping = apir::Forward<7, apir::Empty>;

/// The command buffer for one call of C, as hex.
template <class C>
std::string command(int32_t type_offset, uint32_t reply_res_id,
                    const typename C::request& req = {}) {
    std::array<std::byte, 256> buf{};
    apir::Encoder enc(buf);
    apir::encode_command<C>(enc, type_offset, reply_res_id, req);
    REQUIRE(enc.ok());
    return hex(enc.written());
}

} // namespace

// ---------------------------------------------------------------------------
// Command buffers

TEST_CASE("a HANDSHAKE command is type 0, flags 0, the reply resource id, then version 0.2",
          "[call][golden]") {
    CHECK(command<apir::Handshake>(0, 0x12345678, apir::HandshakeRequest{}) ==
          "00 00 00 00 "  // type HANDSHAKE
          "00 00 00 00 "  // flags
          "78 56 34 12 "  // reply resource id
          "00 00 00 00 "  // guest major
          "02 00 00 00"); // guest minor
}

TEST_CASE("a LOADLIBRARY command is the header alone", "[call][golden]") {
    CHECK(command<apir::LoadLibrary>(0, 7) == "01 00 00 00 00 00 00 00 07 00 00 00");
}

TEST_CASE("a FORWARD command carries the backend's command id in the flags", "[call][golden]") {
    CHECK(command<Add>(0, 9, AddRequest{2, -3}) == "02 00 00 00 "  // type FORWARD
                                                   "2a 00 00 00 "  // flags = command id 42
                                                   "09 00 00 00 "  // reply resource id
                                                   "02 00 00 00 "  // a
                                                   "fd ff ff ff"); // b
    CHECK(command<Ping>(0, 1) == "02 00 00 00 07 00 00 00 01 00 00 00");
}

TEST_CASE("in Venus transition mode 331 is added to the command type", "[call][golden]") {
    CHECK(command<apir::Handshake>(apir::venus_command_offset, 7) ==
          "4b 01 00 00 00 00 00 00 07 00 00 00 00 00 00 00 02 00 00 00");
    CHECK(command<apir::LoadLibrary>(apir::venus_command_offset, 7) ==
          "4c 01 00 00 00 00 00 00 07 00 00 00");
    CHECK(command<Add>(apir::venus_command_offset, 7, AddRequest{1, 1}) ==
          "4d 01 00 00 2a 00 00 00 07 00 00 00 01 00 00 00 01 00 00 00");
}

TEST_CASE("a command buffer decodes back into its header and payload", "[call]") {
    std::array<std::byte, 64> buf{};
    apir::Encoder enc(buf);
    apir::encode_command<Add>(enc, 0, 5, AddRequest{10, 20});
    REQUIRE(enc.size() == apir::command_header_size + 8);

    apir::Decoder dec(enc.written());
    CHECK(static_cast<int32_t>(dec.read_u32()) == static_cast<int32_t>(Add::type));
    CHECK(dec.read_u32() == Add::flags);
    CHECK(dec.read_u32() == 5);
    auto req = dec.get<AddRequest>();
    REQUIRE(req.has_value());
    CHECK(req->a == 10);
    CHECK(req->b == 20);
    CHECK(dec.remaining() == 0);
}

TEST_CASE("CommandHeader is the 12 bytes the guest writes and the host reads", "[call][golden]") {
    std::array<std::byte, 64> buf{};
    apir::Encoder enc(buf);
    // A FORWARD in Venus transition mode: type 2 + 331.
    enc.put(apir::CommandHeader{2 + apir::venus_command_offset, 7, 0x0a0b0c0d});
    REQUIRE(enc.ok());
    CHECK(hex(enc.written()) == "4d 01 00 00 "  // type 333
                                "07 00 00 00 "  // flags: the backend's command id
                                "0d 0c 0b 0a"); // reply resource id
    REQUIRE(enc.size() == apir::command_header_size);

    apir::Encoder call_enc(buf);
    apir::encode_command<Add>(call_enc, apir::venus_command_offset, 0x0a0b0c0d, AddRequest{1, 2});
    apir::Decoder dec(call_enc.written());
    auto h = dec.get<apir::CommandHeader>();
    REQUIRE(h.has_value());
    CHECK(h->type == static_cast<int32_t>(Add::type) + apir::venus_command_offset);
    CHECK(h->flags == Add::flags);
    CHECK(h->reply_res_id == 0x0a0b0c0d);
    CHECK(dec.remaining() == 8); // the request follows

    apir::Decoder short_dec(std::span<const std::byte>(buf).first(8));
    CHECK_FALSE(short_dec.get<apir::CommandHeader>().has_value());
}

TEST_CASE("a command that does not fit its buffer fails with ENCODE_OVERFLOW", "[call]") {
    std::array<std::byte, 16> buf{};
    apir::Encoder enc(buf);
    apir::encode_command<apir::Handshake>(enc, 0, 1, apir::HandshakeRequest{});
    CHECK_FALSE(enc.ok());
    CHECK(enc.status().error().code() == Errc::encode_overflow);
}

TEST_CASE("a handshake reply payload is the host's major and minor version", "[call]") {
    // The reference host answers with its own version, 0.1.
    auto payload = bytes("00 00 00 00 01 00 00 00");
    auto reply = apir::decode_exact<apir::HandshakeReply>(payload);
    REQUIRE(reply.has_value());
    CHECK(reply->major == 0);
    CHECK(reply->minor == 1);
}

TEST_CASE("a Call binds its command type, flags and wire types at compile time", "[call]") {
    STATIC_REQUIRE(apir::Handshake::type == apir::CommandType::handshake);
    STATIC_REQUIRE(apir::Handshake::flags == 0);
    STATIC_REQUIRE(apir::LoadLibrary::type == apir::CommandType::load_library);
    STATIC_REQUIRE(Add::type == apir::CommandType::forward);
    STATIC_REQUIRE(Add::flags == 42);
    STATIC_REQUIRE(std::is_same_v<Add::request, AddRequest>);
    STATIC_REQUIRE(std::is_same_v<Add::response, AddReply>);
    STATIC_REQUIRE(std::is_same_v<Ping::response, apir::Empty>);
    STATIC_REQUIRE(apir::is_call_v<Add>);
    STATIC_REQUIRE(apir::is_call_v<apir::Handshake>);
    STATIC_REQUIRE_FALSE(apir::is_call_v<AddRequest>);
    STATIC_REQUIRE(apir::HandshakeRequest{}.major == apir::protocol_major);
    STATIC_REQUIRE(apir::HandshakeRequest{}.minor == apir::protocol_minor);
}

// ---------------------------------------------------------------------------
// Return codes

TEST_CASE("HANDSHAKE succeeds only on the magic 0xab1e", "[call][check]") {
    CHECK(apir::Handshake::check(apir::handshake_magic).has_value());

    auto code = GENERATE(as<uint32_t>{}, 0, 1, 0xab1f, 0xffffffff);
    auto r = apir::Handshake::check(code);
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().code() == Errc::handshake_failed);
    CHECK(r.error().wire_code() == code);
    CHECK(r.error().message().find("HANDSHAKE_FAILED") != std::string::npos);
}

TEST_CASE("LOADLIBRARY succeeds on 0 and names every other code", "[call][check]") {
    CHECK(apir::LoadLibrary::check(0).has_value());
    CHECK(apir::LoadLibrary::check(3).error().code() == Errc::load_config_missing);
    CHECK(apir::LoadLibrary::check(9).error().code() == Errc::library_config_missing);
    CHECK(apir::LoadLibrary::check(12 + 8).error().code() == Errc::backend_no_device);
    CHECK(apir::LoadLibrary::check(6).error().wire_code() == 6);
}

TEST_CASE("FORWARD succeeds on 0 and on 4 (the backend returned 0)", "[call][check]") {
    CHECK(Add::check(0).has_value());
    CHECK(Add::check(4).has_value());
    CHECK(Add::check(1).error().code() == Errc::forward_no_dispatch);
    CHECK(Add::check(2).error().code() == Errc::forward_timeout);
    CHECK(Add::check(3).error().code() == Errc::forward_sync_streams_failed);
    CHECK(Add::check(4 + 6).error().code() == Errc::forward_invalid_index);
    auto backend = Add::check(5);
    REQUIRE_FALSE(backend.has_value());
    CHECK(backend.error().code() == Errc::forward_backend_error);
    CHECK(backend.error().wire_code() == 5);
}
