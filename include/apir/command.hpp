// CommandHeader: the 12 bytes before every command's payload (docs/PROTOCOL.md §3.1).
//
// The guest writes it (apir::encode_command) and the host reads it (apir::Host), both
// through this one definition.
#pragma once

#include "apir/protocol.hpp"
#include "apir/wire.hpp"

#include <cstdint>

namespace apir {

struct CommandHeader {
    /// The command type plus the transport's command_type_offset, as sent.
    int32_t type = 0;
    /// FORWARD: the backend's command id; 0 for the other commands.
    uint32_t flags = 0;
    /// The resource id of the reply page.
    uint32_t reply_res_id = 0;
    static constexpr auto wire_fields =
        fields(&CommandHeader::type, &CommandHeader::flags, &CommandHeader::reply_res_id);
};

// Three 4-byte scalars: the size the protocol fixes.
static_assert(3 * wire_traits<int32_t>::wire_size == command_header_size);

} // namespace apir
