// Typed calls: Call<Type, Flags, Req, Resp> binds a command type, its flags (a
// FORWARD's command id) and its wire layout at compile time.
//
// A user declares one Forward per remote function of their backend:
//
//     struct AddRequest { int32_t a, b;
//         static constexpr auto wire_fields = apir::fields(&AddRequest::a, &AddRequest::b); };
//     struct AddReply { int64_t sum;
//         static constexpr auto wire_fields = apir::fields(&AddReply::sum); };
//     using Add = apir::Forward<1, AddRequest, AddReply>;
//
//     apir::Expected<AddReply> r = session.call<Add>(AddRequest{2, 3});
#pragma once

#include "apir/command.hpp"
#include "apir/error.hpp"
#include "apir/protocol.hpp"
#include "apir/wire.hpp"

#include <cstdint>
#include <type_traits>

namespace apir {

template <CommandType Type, uint32_t Flags, class Req, class Resp>
struct Call {
    static_assert(Wire<Req>, "apir::Call: the request type has no wire layout (give it "
                             "'static constexpr auto wire_fields = apir::fields(...)')");
    static_assert(Wire<Resp>, "apir::Call: the response type has no wire layout");
    static_assert(!wire_has_view_v<Resp>,
                  "apir::Call: a response is decoded from the reply page, which is reused after "
                  "the call; use owning types (std::string, std::vector) instead of views "
                  "(std::string_view, apir::Bytes)");

    using request = Req;
    using response = Resp;
    static constexpr CommandType type = Type;
    static constexpr uint32_t flags = Flags;

    /// Turns the host's return code into success or a named error.
    [[nodiscard]] static Expected<void> check(uint32_t code) {
        if constexpr (Type == CommandType::handshake) {
            if (code == handshake_magic) return {};
            return fail(
                Error(Errc::handshake_failed, "the host did not answer the APIR magic 0xab1e")
                    .with_wire_code(code));
        } else if constexpr (Type == CommandType::load_library) {
            if (code == static_cast<uint32_t>(LoadLibraryCode::success)) return {};
            return fail(load_library_error(code));
        } else {
            if (code == static_cast<uint32_t>(ForwardCode::success) ||
                code == static_cast<uint32_t>(ForwardCode::base_index))
                return {};
            return fail(forward_error(code));
        }
    }
};

/// A call of the backend's command Id: FORWARD with flags = Id.
template <uint32_t Id, class Req, class Resp = Empty>
using Forward = Call<CommandType::forward, Id, Req, Resp>;

struct HandshakeRequest {
    uint32_t major = protocol_major;
    uint32_t minor = protocol_minor;
    static constexpr auto wire_fields = fields(&HandshakeRequest::major, &HandshakeRequest::minor);
};
struct HandshakeReply {
    uint32_t major = 0;
    uint32_t minor = 0;
    static constexpr auto wire_fields = fields(&HandshakeReply::major, &HandshakeReply::minor);
};

using Handshake = Call<CommandType::handshake, 0, HandshakeRequest, HandshakeReply>;
using LoadLibrary = Call<CommandType::load_library, 0, Empty, Empty>;

template <class T>
inline constexpr bool is_call_v = false;
template <CommandType Type, uint32_t Flags, class Req, class Resp>
inline constexpr bool is_call_v<Call<Type, Flags, Req, Resp>> = true;

/// Writes a command buffer: the CommandHeader (type + offset, flags, reply resource
/// id), then the payload.
template <class C>
void encode_command(Encoder& e, int32_t type_offset, uint32_t reply_res_id,
                    const typename C::request& req) noexcept {
    e.put(CommandHeader{static_cast<int32_t>(C::type) + type_offset, C::flags, reply_res_id});
    e.put(req);
}

} // namespace apir
