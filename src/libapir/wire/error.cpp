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
    const ErrcRow* row = wire_row(WireCommand::load_library, code);
    if (row == nullptr)
        return Error(Errc::library_error, fmt::format("unexpected LOADLIBRARY code {}", code))
            .with_wire_code(code);
    std::string detail;
    if (code >= 2 * base) // the backend's own initialization code (third level)
        detail = fmt::format("backend initialization code {}", code - 2 * base);
    else if (code > base) // what apir_backend_initialize returned (second level)
        detail = fmt::format("apir_backend_initialize returned {}", code - base);
    return Error(row->code, std::move(detail)).with_wire_code(code);
}

Error forward_error(uint32_t code) {
    constexpr auto base = static_cast<uint32_t>(ForwardCode::base_index);
    const ErrcRow* row = wire_row(WireCommand::forward, code);
    if (row == nullptr)
        return Error(Errc::decode_bad_value, fmt::format("unexpected FORWARD code {}", code))
            .with_wire_code(code);
    std::string detail;
    if (row->code == Errc::forward_backend_error)
        detail = fmt::format("backend returned {}", code - base);
    return Error(row->code, std::move(detail)).with_wire_code(code);
}

} // namespace apir

fmt::format_context::iterator fmt::formatter<apir::Error>::format(const apir::Error& e,
                                                                  fmt::format_context& ctx) const {
    return fmt::formatter<std::string_view>::format(e.message(), ctx);
}
