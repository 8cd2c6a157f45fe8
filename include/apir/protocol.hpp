// APIR 0.2 protocol constants and return-code tables.
//
// Every number a peer can send back has a stable name and a human message here.
// The tables follow the wire protocol spoken by ggml's virtgpu backend and the
// virtio-gpu renderer's APIR component.
#pragma once

#include "apir/export.hpp"

#include <cstddef>
#include <cstdint>
#include <iterator>
#include <string_view>

namespace apir {

inline constexpr uint32_t protocol_major = 0;
inline constexpr uint32_t protocol_minor = 2;

/// Success code of HANDSHAKE (the host answers it instead of 0).
inline constexpr uint32_t handshake_magic = 0xab1e;

enum class CommandType : int32_t {
    handshake = 0,
    load_library = 1,
    forward = 2,
};
inline constexpr int32_t command_type_count = 3;

/// virtio-gpu capset ids.
inline constexpr uint32_t capset_apir = 10;
inline constexpr uint32_t capset_venus = 4;
/// In Venus transition mode the command type travels with this offset added.
inline constexpr int32_t venus_command_offset = 331;

inline constexpr uint64_t default_handshake_timeout_ms = 2000;
inline constexpr uint64_t default_load_library_timeout_ms = 60000;

inline constexpr size_t data_shmem_size = 0x1830000; // ggml's 24 MiB data blob
inline constexpr size_t reply_page_size = 0x4000;    // 16 KiB reply page
inline constexpr size_t shmem_alignment = 0x4000;    // blob sizes are rounded to 16 KiB

/// Command buffer header: type, flags, reply resource id.
inline constexpr size_t command_header_size = 12;
/// Reply page header: the notification word.
inline constexpr size_t reply_header_size = 4;

/// Configuration key naming the APIR backend library the host loads.
inline constexpr std::string_view config_library_path = "apir.load_library.path";
/// ggml's host backend reads these through get_config.
inline constexpr std::string_view config_ggml_library_path = "ggml.library.path";
inline constexpr std::string_view config_ggml_library_reg = "ggml.library.reg";

/// LOADLIBRARY return codes as the host sends them (first level).
enum class LoadLibraryCode : uint32_t {
    success = 0,
    hypercall_init_error = 1,
    already_loaded = 2,
    config_missing = 3,
    cannot_open = 4,
    symbol_missing = 5,
    /// A value >= base carries the backend library's own initialize() result.
    base_index = 6,
};

/// FORWARD return codes (first level).
enum class ForwardCode : uint32_t {
    success = 0,
    no_dispatch = 1,
    timeout = 2,
    sync_streams_failed = 3,
    /// A value >= base carries the backend function's own return (value - base).
    base_index = 4,
};

/// What an APIR backend library reports about its own initialization
/// (returned by apir_backend_initialize as LoadLibraryCode::base_index + code).
enum class BackendInitCode : uint32_t {
    success = 0,
    cannot_open_backend_library = 1,
    cannot_open_ggml_library = 2,
    missing_backend_symbols = 3,
    missing_ggml_symbols = 4,
    backend_failed = 5,
    backend_registration_failed = 6,
    already_initialized = 7,
    no_device = 8,
    backend_init_failed = 9,
};
inline constexpr uint32_t backend_init_code_count = 10;

/// Dispatcher return for a command id past its table.
inline constexpr uint32_t forward_invalid_index = 6;

[[nodiscard]] constexpr std::string_view command_type_name(int32_t type) noexcept {
    switch (type) {
    case 0:
        return "HANDSHAKE";
    case 1:
        return "LOADLIBRARY";
    case 2:
        return "FORWARD";
    default:
        return "UNKNOWN_COMMAND";
    }
}

/// A name and a message for one code of one table.
struct CodeInfo {
    std::string_view name;
    std::string_view message;
};

// The tables, indexed by code. They are the one place these names and messages are
// written: apir/error.hpp's rows for the errors these codes decode into refer to them.

/// First-level LOADLIBRARY codes, the host's own answer (0..5).
inline constexpr CodeInfo load_library_codes[] = {
    {"LOAD_SUCCESS", "library loaded"},
    {"LOAD_HYPERCALL_INIT_ERROR", "the host could not initialize its hypercall layer"},
    {"LOAD_ALREADY_LOADED", "a backend library is already loaded in this context"},
    {"LOAD_CONFIG_MISSING", "the host configuration lacks 'apir.load_library.path'"},
    {"LOAD_CANNOT_OPEN", "the host cannot open the APIR backend library"},
    {"LOAD_SYMBOL_MISSING",
     "the APIR backend library lacks apir_backend_initialize or apir_backend_dispatcher"},
};
static_assert(std::size(load_library_codes) == static_cast<uint32_t>(LoadLibraryCode::base_index));
inline constexpr CodeInfo load_library_code_unknown = {"LOAD_UNKNOWN", "unknown LOADLIBRARY code"};

/// BackendInitCode, the backend's own initialization code (0..9).
inline constexpr CodeInfo backend_init_codes[] = {
    {"BACKEND_SUCCESS", "backend initialized"},
    {"BACKEND_CANNOT_OPEN_BACKEND_LIBRARY", "cannot open the backend library"},
    {"BACKEND_CANNOT_OPEN_GGML_LIBRARY",
     "cannot open the ggml library (check 'ggml.library.path')"},
    {"BACKEND_MISSING_BACKEND_SYMBOLS", "the backend library lacks symbols"},
    {"BACKEND_MISSING_GGML_SYMBOLS", "the ggml library lacks symbols (check 'ggml.library.reg')"},
    {"BACKEND_FAILED", "the backend failed"},
    {"BACKEND_REGISTRATION_FAILED", "backend registration failed"},
    {"BACKEND_ALREADY_INITIALIZED", "the backend is already initialized"},
    {"BACKEND_NO_DEVICE", "the backend found no device"},
    {"BACKEND_INIT_FAILED", "backend initialization failed"},
};
static_assert(std::size(backend_init_codes) == backend_init_code_count);
inline constexpr CodeInfo backend_init_code_unknown = {"BACKEND_UNKNOWN",
                                                       "unknown backend initialization code"};

/// First-level FORWARD codes (0..3); every code from ForwardCode::base_index on is
/// forward_code_backend_return.
inline constexpr CodeInfo forward_codes[] = {
    {"FORWARD_SUCCESS", "call succeeded"},
    {"FORWARD_NO_DISPATCH", "the host has no dispatch function (LOADLIBRARY has not succeeded)"},
    {"FORWARD_TIMEOUT", "the host timed out"},
    {"FORWARD_SYNC_STREAMS_FAILED", "the host failed to sync streams"},
};
static_assert(std::size(forward_codes) == static_cast<uint32_t>(ForwardCode::base_index));
inline constexpr CodeInfo forward_code_backend_return = {"FORWARD_BACKEND_ERROR",
                                                         "the backend function returned an error"};

/// First-level LOADLIBRARY code (0..5); codes >= 6 are decoded by the error layer.
[[nodiscard]] constexpr CodeInfo load_library_code_info(uint32_t code) noexcept {
    return code < std::size(load_library_codes) ? load_library_codes[code]
                                                : load_library_code_unknown;
}

[[nodiscard]] constexpr CodeInfo backend_init_code_info(uint32_t code) noexcept {
    return code < std::size(backend_init_codes) ? backend_init_codes[code]
                                                : backend_init_code_unknown;
}

[[nodiscard]] constexpr CodeInfo forward_code_info(uint32_t code) noexcept {
    return code < std::size(forward_codes) ? forward_codes[code] : forward_code_backend_return;
}

} // namespace apir
