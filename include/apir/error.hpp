// Errors as values: apir::Error and apir::Expected<T>.
//
// No exception crosses the public API and nothing aborts on bad input from the peer.
// An Error carries a code (with a stable name), the category a caller acts on, the
// raw protocol code when one came off the wire, errno when a system call failed, and
// a message that names the cause and, where known, the fix.
//
//     apir::Expected<Reply> r = session.call<MyCall>(req);
//     if (!r) {
//         if (r.error().category() == apir::Category::timeout) retry();
//         log("{}", r.error());   // "TIMEOUT: ..."
//     }
#pragma once

#include "apir/export.hpp"
#include "apir/protocol.hpp"

#include <fmt/core.h>

#include <cstddef>
#include <cstdint>
#include <iterator>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <variant>

namespace apir {

/// What a caller can do about an error.
enum class Category : uint8_t {
    protocol,         ///< the peer sent something malformed: a bug or a hostile peer
    timeout,          ///< the deadline passed: retry, or raise the deadline
    device,           ///< the transport or device failed or disconnected: reconnect
    backend,          ///< the backend library refused or failed: see its code
    version,          ///< the peers speak incompatible protocol versions
    invalid_argument, ///< the caller passed something wrong: fix the call
    exhausted,        ///< out of memory, buffer space or resources: free some or shrink
    unsupported,      ///< the device or build lacks a feature
};

/// Category names, one row per Category in enum order.
inline constexpr std::pair<Category, std::string_view> category_names[] = {
    {Category::protocol, "protocol"},   {Category::timeout, "timeout"},
    {Category::device, "device"},       {Category::backend, "backend"},
    {Category::version, "version"},     {Category::invalid_argument, "invalid_argument"},
    {Category::exhausted, "exhausted"}, {Category::unsupported, "unsupported"},
};

[[nodiscard]] constexpr std::string_view category_name(Category c) noexcept {
    auto i = static_cast<size_t>(c);
    return i < std::size(category_names) ? category_names[i].second : "unknown";
}

/// Every error the library reports. Names are stable (see error_info()).
enum class Errc : uint16_t {
    // wire
    encode_overflow,
    decode_overrun,
    decode_size_too_large,
    decode_missing_nul,
    decode_bad_value,
    // calls and replies
    invalid_argument,
    timeout,
    disconnected,
    unknown_resource,
    reply_too_large,
    handshake_failed,
    version_mismatch,
    unknown_command,
    // transport and system
    no_device,
    device_error,
    out_of_memory,
    unsupported,
    library_error,
    // LOADLIBRARY, first level: the host's own answer (codes 1..5)
    load_hypercall_init_error,
    load_already_loaded,
    load_config_missing,
    load_cannot_open,
    load_symbol_missing,
    // LOADLIBRARY, second level: what apir_backend_initialize returned (codes 7..11)
    library_hypercall_init_error,
    library_already_loaded,
    library_config_missing,
    library_cannot_open,
    library_symbol_missing,
    // LOADLIBRARY, third level: the backend's own initialization code (codes 12+)
    backend_cannot_open_backend_library,
    backend_cannot_open_ggml_library,
    backend_missing_backend_symbols,
    backend_missing_ggml_symbols,
    backend_failed,
    backend_registration_failed,
    backend_already_initialized,
    backend_no_device,
    backend_init_failed,
    backend_init_unknown,
    // FORWARD
    forward_no_dispatch,
    forward_timeout,
    forward_sync_streams_failed,
    forward_invalid_index,
    forward_backend_error,
    // calls, continued
    host_behind,
    staging_exhausted,
    // ggml's command set (apir/ggml/)
    ggml_unknown_handle,
    ggml_status_alloc_failed,
    ggml_status_failed,
    ggml_status_aborted,
    count_
};

struct ErrcInfo {
    std::string_view name;
    Category category;
    std::string_view message;
};

/// Which command's return codes an error is decoded from.
enum class WireCommand : uint8_t { none, load_library, forward };

/// The return codes an error stands for, as the guest receives them: first..last of
/// one command. A range (first < last) takes the codes no narrower row claims.
struct WireRange {
    WireCommand command = WireCommand::none;
    uint32_t first = 0;
    uint32_t last = 0;
    [[nodiscard]] constexpr bool contains(WireCommand cmd, uint32_t code) const noexcept {
        return command != WireCommand::none && command == cmd && first <= code && code <= last;
    }
};

/// One row of the error table: a code, its name, category and message, and the wire
/// codes it is decoded from (load_library_error, forward_error), if any.
struct ErrcRow {
    Errc code;
    ErrcInfo info;
    WireRange wire = {};
};

/// Builders for the rows of error_table.
namespace errc_rows {
inline constexpr uint32_t load_base = static_cast<uint32_t>(LoadLibraryCode::base_index);
inline constexpr uint32_t forward_base = static_cast<uint32_t>(ForwardCode::base_index);
inline constexpr uint32_t last_code = 0xffffffff;

/// A row whose name and message are those of a protocol code (apir/protocol.hpp).
constexpr ErrcInfo from(CodeInfo c, Category category) noexcept {
    return {c.name, category, c.message};
}
/// LOADLIBRARY code c (1..5): the host's own answer.
constexpr WireRange load_host(uint32_t c) noexcept {
    return {WireCommand::load_library, c, c};
}
/// LOADLIBRARY code 6 + c (7..11): apir_backend_initialize returned c.
constexpr WireRange load_library(uint32_t c) noexcept {
    return {WireCommand::load_library, load_base + c, load_base + c};
}
/// LOADLIBRARY code 12 + c: the backend's own initialization code c.
constexpr WireRange load_backend(uint32_t c) noexcept {
    return {WireCommand::load_library, 2 * load_base + c, 2 * load_base + c};
}
/// FORWARD code c (1..3): the host's own failure.
constexpr WireRange forward_host(uint32_t c) noexcept {
    return {WireCommand::forward, c, c};
}
/// FORWARD code 4 + r: the backend function returned r.
constexpr WireRange forward_backend(uint32_t r) noexcept {
    return {WireCommand::forward, forward_base + r, forward_base + r};
}
} // namespace errc_rows

/// Every error code, one row each, in enum order: error_info() indexes it.
inline constexpr ErrcRow error_table[] = {
    // wire
    {Errc::encode_overflow,
     {"ENCODE_OVERFLOW", Category::exhausted, "message does not fit its buffer"}},
    {Errc::decode_overrun, {"DECODE_OVERRUN", Category::protocol, "message ends before the field"}},
    {Errc::decode_size_too_large,
     {"DECODE_SIZE_TOO_LARGE", Category::protocol,
      "size prefix larger than the remaining bytes or the cap"}},
    {Errc::decode_missing_nul,
     {"DECODE_MISSING_NUL", Category::protocol, "string lacks its terminating NUL"}},
    {Errc::decode_bad_value,
     {"DECODE_BAD_VALUE", Category::protocol, "field holds a value outside its range"}},
    // calls and replies
    {Errc::invalid_argument, {"INVALID_ARGUMENT", Category::invalid_argument, "invalid argument"}},
    {Errc::timeout, {"TIMEOUT", Category::timeout, "no reply before the deadline"}},
    {Errc::disconnected, {"DISCONNECTED", Category::device, "the other side is gone"}},
    {Errc::unknown_resource,
     {"UNKNOWN_RESOURCE", Category::protocol, "no shared memory with that resource id"}},
    {Errc::reply_too_large,
     {"REPLY_TOO_LARGE", Category::protocol, "reply does not fit the reply page"}},
    {Errc::handshake_failed,
     {"HANDSHAKE_FAILED", Category::protocol, "the host did not answer the handshake magic"}},
    {Errc::version_mismatch,
     {"VERSION_MISMATCH", Category::version, "incompatible APIR protocol major version"}},
    {Errc::unknown_command, {"UNKNOWN_COMMAND", Category::protocol, "unknown APIR command type"}},
    // transport and system
    {Errc::no_device, {"NO_DEVICE", Category::device, "no usable virtio-gpu device"}},
    {Errc::device_error, {"DEVICE_ERROR", Category::device, "device request failed"}},
    {Errc::out_of_memory,
     {"OUT_OF_MEMORY", Category::exhausted, "out of memory or shared-memory space"}},
    {Errc::unsupported, {"UNSUPPORTED", Category::unsupported, "not supported"}},
    {Errc::library_error, {"LIBRARY_ERROR", Category::backend, "the backend library misbehaved"}},
    // LOADLIBRARY, first level: the host's own answer (codes 1..5)
    {Errc::load_hypercall_init_error, errc_rows::from(load_library_codes[1], Category::backend),
     errc_rows::load_host(1)},
    {Errc::load_already_loaded, errc_rows::from(load_library_codes[2], Category::backend),
     errc_rows::load_host(2)},
    {Errc::load_config_missing, errc_rows::from(load_library_codes[3], Category::backend),
     errc_rows::load_host(3)},
    {Errc::load_cannot_open, errc_rows::from(load_library_codes[4], Category::backend),
     errc_rows::load_host(4)},
    {Errc::load_symbol_missing, errc_rows::from(load_library_codes[5], Category::backend),
     errc_rows::load_host(5)},
    // LOADLIBRARY, second level: what apir_backend_initialize returned (codes 7..11)
    {Errc::library_hypercall_init_error,
     {"LIBRARY_HYPERCALL_INIT_ERROR", Category::backend,
      "the backend library could not initialize its hypercall layer"},
     errc_rows::load_library(1)},
    {Errc::library_already_loaded,
     {"LIBRARY_ALREADY_LOADED", Category::backend, "the backend library is already loaded"},
     errc_rows::load_library(2)},
    {Errc::library_config_missing,
     {"LIBRARY_CONFIG_MISSING", Category::backend,
      "the backend library found no configuration (check 'ggml.library.path')"},
     errc_rows::load_library(3)},
    {Errc::library_cannot_open,
     {"LIBRARY_CANNOT_OPEN", Category::backend,
      "the backend library cannot open the library it wraps"},
     errc_rows::load_library(4)},
    {Errc::library_symbol_missing,
     {"LIBRARY_SYMBOL_MISSING", Category::backend,
      "the library wrapped by the backend lacks a symbol (check 'ggml.library.reg')"},
     errc_rows::load_library(5)},
    // LOADLIBRARY, third level: the backend's own initialization code (codes 12+)
    {Errc::backend_cannot_open_backend_library,
     errc_rows::from(backend_init_codes[1], Category::backend), errc_rows::load_backend(1)},
    {Errc::backend_cannot_open_ggml_library,
     errc_rows::from(backend_init_codes[2], Category::backend), errc_rows::load_backend(2)},
    {Errc::backend_missing_backend_symbols,
     errc_rows::from(backend_init_codes[3], Category::backend), errc_rows::load_backend(3)},
    {Errc::backend_missing_ggml_symbols, errc_rows::from(backend_init_codes[4], Category::backend),
     errc_rows::load_backend(4)},
    {Errc::backend_failed, errc_rows::from(backend_init_codes[5], Category::backend),
     errc_rows::load_backend(5)},
    {Errc::backend_registration_failed, errc_rows::from(backend_init_codes[6], Category::backend),
     errc_rows::load_backend(6)},
    {Errc::backend_already_initialized, errc_rows::from(backend_init_codes[7], Category::backend),
     errc_rows::load_backend(7)},
    {Errc::backend_no_device, errc_rows::from(backend_init_codes[8], Category::backend),
     errc_rows::load_backend(8)},
    {Errc::backend_init_failed, errc_rows::from(backend_init_codes[9], Category::backend),
     errc_rows::load_backend(9)},
    // every other code from 12 on (12 itself is the backend's success, sent as a failure)
    {Errc::backend_init_unknown,
     errc_rows::from(backend_init_code_unknown, Category::backend),
     {WireCommand::load_library, 2 * errc_rows::load_base, errc_rows::last_code}},
    // FORWARD
    {Errc::forward_no_dispatch, errc_rows::from(forward_codes[1], Category::backend),
     errc_rows::forward_host(1)},
    {Errc::forward_timeout, errc_rows::from(forward_codes[2], Category::timeout),
     errc_rows::forward_host(2)},
    {Errc::forward_sync_streams_failed, errc_rows::from(forward_codes[3], Category::backend),
     errc_rows::forward_host(3)},
    {Errc::forward_invalid_index,
     {"FORWARD_INVALID_INDEX", Category::invalid_argument,
      "the backend has no command with this id"},
     errc_rows::forward_backend(forward_invalid_index)},
    // every other code from 4 on: the backend function's own return
    {Errc::forward_backend_error,
     errc_rows::from(forward_code_backend_return, Category::backend),
     {WireCommand::forward, errc_rows::forward_base, errc_rows::last_code}},
    // calls, continued
    {Errc::host_behind,
     {"HOST_BEHIND", Category::timeout,
      "the host has not answered the calls that timed out before: retry later"}},
    {Errc::staging_exhausted,
     {"STAGING_EXHAUSTED", Category::exhausted,
      "every staging blob the session may lend stayed held: hold fewer, or raise "
      "staging_blobs"}},
    // ggml's command set (apir/ggml/)
    {Errc::ggml_unknown_handle,
     {"GGML_UNKNOWN_HANDLE", Category::invalid_argument,
      "handle not received from this device, or already freed"}},
    {Errc::ggml_status_alloc_failed,
     {"GGML_STATUS_ALLOC_FAILED", Category::exhausted, "the host could not allocate the graph"}},
    {Errc::ggml_status_failed,
     {"GGML_STATUS_FAILED", Category::backend, "the host failed to compute the graph"}},
    {Errc::ggml_status_aborted,
     {"GGML_STATUS_ABORTED", Category::backend, "the host aborted the graph computation"}},
};

/// What error_info() answers for a value outside the enum.
inline constexpr ErrcInfo unknown_error_info = {"UNKNOWN_ERROR", Category::protocol,
                                                "unknown error"};

[[nodiscard]] constexpr ErrcInfo error_info(Errc e) noexcept {
    auto i = static_cast<size_t>(e);
    return i < std::size(error_table) ? error_table[i].info : unknown_error_info;
}

/// The index in error_table of the row a return code of `command` decodes into: the
/// narrowest range holding the code, or std::size(error_table) when none does. (Indices,
/// not pointers: a pointer comparison in a constant expression is refused by g++ under
/// -fsanitize=undefined.)
[[nodiscard]] constexpr size_t wire_row_index(WireCommand command, uint32_t code) noexcept {
    size_t best = std::size(error_table);
    for (size_t i = 0; i < std::size(error_table); ++i) {
        const WireRange& w = error_table[i].wire;
        if (w.contains(command, code) &&
            (best == std::size(error_table) ||
             w.last - w.first < error_table[best].wire.last - error_table[best].wire.first))
            best = i;
    }
    return best;
}

/// The row of error_table a return code of `command` decodes into: the narrowest
/// range holding the code, or none.
[[nodiscard]] constexpr const ErrcRow* wire_row(WireCommand command, uint32_t code) noexcept {
    const size_t i = wire_row_index(command, code);
    return i < std::size(error_table) ? &error_table[i] : nullptr;
}

// The invariants of the tables, checked at compile time.
namespace errc_rows {
constexpr bool categories_in_enum_order() noexcept {
    for (size_t i = 0; i < std::size(category_names); ++i)
        if (static_cast<size_t>(category_names[i].first) != i) return false;
    return std::size(category_names) == static_cast<size_t>(Category::unsupported) + 1;
}
constexpr bool rows_in_enum_order() noexcept {
    for (size_t i = 0; i < std::size(error_table); ++i)
        if (static_cast<size_t>(error_table[i].code) != i) return false;
    return std::size(error_table) == static_cast<size_t>(Errc::count_);
}
constexpr bool names_unique() noexcept {
    for (size_t i = 0; i < std::size(error_table); ++i) {
        const ErrcInfo& info = error_table[i].info;
        if (info.name.empty() || info.message.empty() || info.name == unknown_error_info.name)
            return false;
        for (size_t j = 0; j < i; ++j)
            if (error_table[j].info.name == info.name) return false;
    }
    return true;
}
constexpr bool wire_codes_decode_to_their_row() noexcept {
    for (size_t i = 0; i < std::size(error_table); ++i) {
        const WireRange& w = error_table[i].wire;
        if (w.command == WireCommand::none) continue;
        if (w.first > w.last) return false;
        if (wire_row_index(w.command, w.first) != i) return false;
    }
    return true;
}
static_assert(categories_in_enum_order(), "category_names: row i must hold Category(i)");
static_assert(rows_in_enum_order(), "error_table: row i must hold Errc(i), one row per code");
static_assert(names_unique(), "error_table: every name non-empty and unique, with a message");
static_assert(wire_codes_decode_to_their_row(), "error_table: two rows claim one wire code");
} // namespace errc_rows

/// An error value. Cheap to move; the detail string is only filled on error paths.
class Error {
public:
    Error() = default;
    explicit Error(Errc code, std::string detail = {}) : code_(code), detail_(std::move(detail)) {}

    [[nodiscard]] Errc code() const noexcept { return code_; }
    [[nodiscard]] std::string_view name() const noexcept { return error_info(code_).name; }
    [[nodiscard]] Category category() const noexcept { return error_info(code_).category; }
    /// The generic message of the code.
    [[nodiscard]] std::string_view summary() const noexcept { return error_info(code_).message; }
    /// What went wrong in this instance (may be empty).
    [[nodiscard]] const std::string& detail() const noexcept { return detail_; }
    /// "NAME: summary (detail)".
    [[nodiscard]] APIR_EXPORT std::string message() const;

    /// The raw return code read off the wire, if the error came from one.
    [[nodiscard]] bool has_wire_code() const noexcept { return has_wire_code_; }
    [[nodiscard]] uint32_t wire_code() const noexcept { return wire_code_; }
    Error& with_wire_code(uint32_t c) & noexcept {
        wire_code_ = c;
        has_wire_code_ = true;
        return *this;
    }
    Error&& with_wire_code(uint32_t c) && noexcept { return std::move(with_wire_code(c)); }

    /// errno of the failed system call, or 0.
    [[nodiscard]] int sys_errno() const noexcept { return errno_; }
    Error& with_errno(int e) & noexcept {
        errno_ = e;
        return *this;
    }
    Error&& with_errno(int e) && noexcept { return std::move(with_errno(e)); }

    /// The same error (code, wire code, errno) with what the caller was doing before its
    /// detail: "context: detail", or the context alone.
    [[nodiscard]] Error with_context(std::string_view context) const {
        Error out = *this;
        out.detail_ = detail_.empty() ? std::string(context)
                                      : std::string(context).append(": ").append(detail_);
        return out;
    }
    /// The same error with a note after its detail: "detail; note", or the note alone.
    [[nodiscard]] Error with_note(std::string_view note) const {
        Error out = *this;
        out.detail_ = detail_.empty() ? std::string(note) : detail_ + "; " + std::string(note);
        return out;
    }

    friend bool operator==(const Error& e, Errc c) noexcept { return e.code_ == c; }

private:
    Errc code_ = Errc::invalid_argument;
    bool has_wire_code_ = false;
    uint32_t wire_code_ = 0;
    int errno_ = 0;
    std::string detail_;
};

/// Decodes a non-zero LOADLIBRARY return code (as the guest receives it) into an
/// error, telling the three levels apart: the host (1..5), the backend library's
/// own answer (7..11) and the backend's initialization code (12 + code).
[[nodiscard]] APIR_EXPORT Error load_library_error(uint32_t code);
/// Decodes a FORWARD return code other than success (0 or 4) into an error.
[[nodiscard]] APIR_EXPORT Error forward_error(uint32_t code);

/// Tag for constructing an Expected in the error state.
struct Unexpected {
    Error error;
};
[[nodiscard]] inline Unexpected fail(Errc code, std::string detail = {}) {
    return Unexpected{Error(code, std::move(detail))};
}
[[nodiscard]] inline Unexpected fail(Error e) {
    return Unexpected{std::move(e)};
}

/// A value or an Error. Small and allocation-free on the success path.
template <class T>
class [[nodiscard]] Expected {
public:
    using value_type = T;

    Expected() requires std::is_default_constructible_v<T> : v_(std::in_place_index<0>) {}
    Expected(T value) : v_(std::in_place_index<0>, std::move(value)) {}
    Expected(Unexpected u) : v_(std::in_place_index<1>, std::move(u.error)) {}
    Expected(Error e) : v_(std::in_place_index<1>, std::move(e)) {}

    [[nodiscard]] bool has_value() const noexcept { return v_.index() == 0; }
    explicit operator bool() const noexcept { return has_value(); }

    T& value() & { return std::get<0>(v_); }
    const T& value() const& { return std::get<0>(v_); }
    T&& value() && { return std::get<0>(std::move(v_)); }
    T& operator*() & { return value(); }
    const T& operator*() const& { return value(); }
    T&& operator*() && { return std::move(*this).value(); }
    T* operator->() { return &value(); }
    const T* operator->() const { return &value(); }

    const Error& error() const& { return std::get<1>(v_); }
    Error&& error() && { return std::get<1>(std::move(v_)); }

private:
    std::variant<T, Error> v_;
};

template <>
class [[nodiscard]] Expected<void> {
public:
    using value_type = void;
    Expected() = default;
    Expected(Unexpected u) : err_(std::move(u.error)), failed_(true) {}
    Expected(Error e) : err_(std::move(e)), failed_(true) {}

    [[nodiscard]] bool has_value() const noexcept { return !failed_; }
    explicit operator bool() const noexcept { return !failed_; }
    const Error& error() const& { return err_; }
    Error&& error() && { return std::move(err_); }

private:
    Error err_;
    bool failed_ = false;
};

/// Propagates an error from an expression yielding an Expected.
#define APIR_TRY(expr)                                                                             \
    do {                                                                                           \
        if (auto apir_try_r_ = (expr); !apir_try_r_)                                               \
            return ::apir::Unexpected{std::move(apir_try_r_).error()};                             \
    } while (0)

} // namespace apir

// Formats as Error::message(): fmt::print("{}", error), with string format specs. The
// formatting is compiled into the library (src/libapir/wire/error.cpp): fmt/core.h is enough.
template <>
struct fmt::formatter<apir::Error> : fmt::formatter<std::string_view> {
    APIR_EXPORT fmt::format_context::iterator format(const apir::Error& e,
                                                     fmt::format_context& ctx) const;
};
