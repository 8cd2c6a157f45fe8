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

#include <cstdint>
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

[[nodiscard]] constexpr std::string_view category_name(Category c) noexcept {
    switch (c) {
    case Category::protocol:
        return "protocol";
    case Category::timeout:
        return "timeout";
    case Category::device:
        return "device";
    case Category::backend:
        return "backend";
    case Category::version:
        return "version";
    case Category::invalid_argument:
        return "invalid_argument";
    case Category::exhausted:
        return "exhausted";
    case Category::unsupported:
        return "unsupported";
    }
    return "unknown";
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

[[nodiscard]] constexpr ErrcInfo error_info(Errc e) noexcept {
    using C = Category;
    switch (e) {
    case Errc::encode_overflow:
        return {"ENCODE_OVERFLOW", C::exhausted, "message does not fit its buffer"};
    case Errc::decode_overrun:
        return {"DECODE_OVERRUN", C::protocol, "message ends before the field"};
    case Errc::decode_size_too_large:
        return {"DECODE_SIZE_TOO_LARGE", C::protocol,
                "size prefix larger than the remaining bytes or the cap"};
    case Errc::decode_missing_nul:
        return {"DECODE_MISSING_NUL", C::protocol, "string lacks its terminating NUL"};
    case Errc::decode_bad_value:
        return {"DECODE_BAD_VALUE", C::protocol, "field holds a value outside its range"};
    case Errc::invalid_argument:
        return {"INVALID_ARGUMENT", C::invalid_argument, "invalid argument"};
    case Errc::timeout:
        return {"TIMEOUT", C::timeout, "no reply before the deadline"};
    case Errc::disconnected:
        return {"DISCONNECTED", C::device, "the other side is gone"};
    case Errc::unknown_resource:
        return {"UNKNOWN_RESOURCE", C::protocol, "no shared memory with that resource id"};
    case Errc::reply_too_large:
        return {"REPLY_TOO_LARGE", C::protocol, "reply does not fit the reply page"};
    case Errc::handshake_failed:
        return {"HANDSHAKE_FAILED", C::protocol, "the host did not answer the handshake magic"};
    case Errc::version_mismatch:
        return {"VERSION_MISMATCH", C::version, "incompatible APIR protocol major version"};
    case Errc::unknown_command:
        return {"UNKNOWN_COMMAND", C::protocol, "unknown APIR command type"};
    case Errc::no_device:
        return {"NO_DEVICE", C::device, "no usable virtio-gpu device"};
    case Errc::device_error:
        return {"DEVICE_ERROR", C::device, "device request failed"};
    case Errc::out_of_memory:
        return {"OUT_OF_MEMORY", C::exhausted, "out of memory or shared-memory space"};
    case Errc::unsupported:
        return {"UNSUPPORTED", C::unsupported, "not supported"};
    case Errc::library_error:
        return {"LIBRARY_ERROR", C::backend, "the backend library misbehaved"};
    case Errc::load_hypercall_init_error:
    case Errc::load_already_loaded:
    case Errc::load_config_missing:
    case Errc::load_cannot_open:
    case Errc::load_symbol_missing: {
        auto i = load_library_code_info(static_cast<uint32_t>(e) -
                                        static_cast<uint32_t>(Errc::load_hypercall_init_error) + 1);
        return {i.name, C::backend, i.message};
    }
    case Errc::library_hypercall_init_error:
        return {"LIBRARY_HYPERCALL_INIT_ERROR", C::backend,
                "the backend library could not initialize its hypercall layer"};
    case Errc::library_already_loaded:
        return {"LIBRARY_ALREADY_LOADED", C::backend, "the backend library is already loaded"};
    case Errc::library_config_missing:
        return {"LIBRARY_CONFIG_MISSING", C::backend,
                "the backend library found no configuration (check 'ggml.library.path')"};
    case Errc::library_cannot_open:
        return {"LIBRARY_CANNOT_OPEN", C::backend,
                "the backend library cannot open the library it wraps"};
    case Errc::library_symbol_missing:
        return {"LIBRARY_SYMBOL_MISSING", C::backend,
                "the library wrapped by the backend lacks a symbol (check 'ggml.library.reg')"};
    case Errc::backend_cannot_open_backend_library:
    case Errc::backend_cannot_open_ggml_library:
    case Errc::backend_missing_backend_symbols:
    case Errc::backend_missing_ggml_symbols:
    case Errc::backend_failed:
    case Errc::backend_registration_failed:
    case Errc::backend_already_initialized:
    case Errc::backend_no_device:
    case Errc::backend_init_failed:
    case Errc::backend_init_unknown: {
        auto code = static_cast<uint32_t>(e) -
                    static_cast<uint32_t>(Errc::backend_cannot_open_backend_library) + 1;
        auto i = backend_init_code_info(code);
        return {i.name, C::backend, i.message};
    }
    case Errc::forward_no_dispatch:
    case Errc::forward_timeout:
    case Errc::forward_sync_streams_failed: {
        auto i = forward_code_info(static_cast<uint32_t>(e) -
                                   static_cast<uint32_t>(Errc::forward_no_dispatch) + 1);
        return {i.name, e == Errc::forward_timeout ? C::timeout : C::backend, i.message};
    }
    case Errc::forward_invalid_index:
        return {"FORWARD_INVALID_INDEX", C::invalid_argument,
                "the backend has no command with this id"};
    case Errc::forward_backend_error:
        return {"FORWARD_BACKEND_ERROR", C::backend, "the backend function returned an error"};
    case Errc::host_behind:
        return {"HOST_BEHIND", C::timeout,
                "the host has not answered the calls that timed out before: retry later"};
    case Errc::staging_exhausted:
        return {"STAGING_EXHAUSTED", C::exhausted,
                "every staging blob the session may lend stayed held: hold fewer, or raise "
                "staging_blobs"};
    case Errc::ggml_unknown_handle:
        return {"GGML_UNKNOWN_HANDLE", C::invalid_argument,
                "handle not received from this device, or already freed"};
    case Errc::ggml_status_alloc_failed:
        return {"GGML_STATUS_ALLOC_FAILED", C::exhausted, "the host could not allocate the graph"};
    case Errc::ggml_status_failed:
        return {"GGML_STATUS_FAILED", C::backend, "the host failed to compute the graph"};
    case Errc::ggml_status_aborted:
        return {"GGML_STATUS_ABORTED", C::backend, "the host aborted the graph computation"};
    case Errc::count_:
        break;
    }
    return {"UNKNOWN_ERROR", C::protocol, "unknown error"};
}

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
// formatting is compiled into the library (src/wire/error.cpp): fmt/core.h is enough.
template <>
struct fmt::formatter<apir::Error> : fmt::formatter<std::string_view> {
    APIR_EXPORT fmt::format_context::iterator format(const apir::Error& e,
                                                     fmt::format_context& ctx) const;
};
