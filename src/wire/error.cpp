// Error messages and the decoding of LOADLIBRARY and FORWARD return codes: compiled
// once here, not in every translation unit that includes apir/error.hpp.
#include "apir/error.hpp"

#include <fmt/format.h>

namespace apir {

std::string Error::message() const {
    std::string s = fmt::format("{}: {}", name(), summary());
    if (has_wire_code_) s += fmt::format(" [code {}]", wire_code_);
    if (errno_ != 0) s += fmt::format(" [errno {}]", errno_);
    if (!detail_.empty()) s += fmt::format(" ({})", detail_);
    return s;
}

Error load_library_error(uint32_t code) {
    constexpr auto base = static_cast<uint32_t>(LoadLibraryCode::base_index);
    auto shifted = [](Errc first, uint32_t offset) {
        return static_cast<Errc>(static_cast<uint32_t>(first) + offset);
    };
    if (code >= 1 && code < base) {
        // The host itself refused (first level).
        return Error(shifted(Errc::load_hypercall_init_error, code - 1)).with_wire_code(code);
    }
    if (code >= base) {
        uint32_t lib = code - base; // what apir_backend_initialize returned
        if (lib >= 1 && lib < base)
            return Error(shifted(Errc::library_hypercall_init_error, lib - 1),
                         fmt::format("apir_backend_initialize returned {}", lib))
                .with_wire_code(code);
        if (lib >= base) {
            uint32_t init = lib - base; // the backend's own initialization code
            Errc e = init >= 1 && init < backend_init_code_count
                         ? shifted(Errc::backend_cannot_open_backend_library, init - 1)
                         : Errc::backend_init_unknown;
            return Error(e, fmt::format("backend initialization code {}", init))
                .with_wire_code(code);
        }
    }
    return Error(Errc::library_error, fmt::format("unexpected LOADLIBRARY code {}", code))
        .with_wire_code(code);
}

Error forward_error(uint32_t code) {
    constexpr auto base = static_cast<uint32_t>(ForwardCode::base_index);
    switch (code) {
    case 1:
        return Error(Errc::forward_no_dispatch).with_wire_code(code);
    case 2:
        return Error(Errc::forward_timeout).with_wire_code(code);
    case 3:
        return Error(Errc::forward_sync_streams_failed).with_wire_code(code);
    default:
        break;
    }
    if (code >= base) {
        uint32_t ret = code - base;
        if (ret == forward_invalid_index)
            return Error(Errc::forward_invalid_index).with_wire_code(code);
        return Error(Errc::forward_backend_error, fmt::format("backend returned {}", ret))
            .with_wire_code(code);
    }
    return Error(Errc::decode_bad_value, fmt::format("unexpected FORWARD code {}", code))
        .with_wire_code(code);
}

} // namespace apir

fmt::format_context::iterator fmt::formatter<apir::Error>::format(const apir::Error& e,
                                                                  fmt::format_context& ctx) const {
    return fmt::formatter<std::string_view>::format(e.message(), ctx);
}
