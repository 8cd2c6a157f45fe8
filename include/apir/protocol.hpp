// APIR 0.2 protocol constants and return-code tables.
//
// Every number a peer can send back has a stable name and a human message here.
// The tables follow the wire protocol spoken by ggml's virtgpu backend and the
// virtio-gpu renderer's APIR component.
#pragma once

#include "apir/export.hpp"

#include <cstddef>
#include <cstdint>
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

/// A name and a message for one code of one table.
struct CodeInfo {
    std::string_view name;
    std::string_view message;
};

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

/// First-level LOADLIBRARY code (0..5); codes >= 6 are decoded by the error layer.
[[nodiscard]] constexpr CodeInfo load_library_code_info(uint32_t code) noexcept {
    switch (code) {
    case 0:
        return {"LOAD_SUCCESS", "library loaded"};
    case 1:
        return {"LOAD_HYPERCALL_INIT_ERROR", "the host could not initialize its hypercall layer"};
    case 2:
        return {"LOAD_ALREADY_LOADED", "a backend library is already loaded in this context"};
    case 3:
        return {"LOAD_CONFIG_MISSING", "the host configuration lacks 'apir.load_library.path'"};
    case 4:
        return {"LOAD_CANNOT_OPEN", "the host cannot open the APIR backend library"};
    case 5:
        return {"LOAD_SYMBOL_MISSING", "the APIR backend library lacks apir_backend_initialize or "
                                       "apir_backend_dispatcher"};
    default:
        return {"LOAD_UNKNOWN", "unknown LOADLIBRARY code"};
    }
}

[[nodiscard]] constexpr CodeInfo backend_init_code_info(uint32_t code) noexcept {
    switch (code) {
    case 0:
        return {"BACKEND_SUCCESS", "backend initialized"};
    case 1:
        return {"BACKEND_CANNOT_OPEN_BACKEND_LIBRARY", "cannot open the backend library"};
    case 2:
        return {"BACKEND_CANNOT_OPEN_GGML_LIBRARY",
                "cannot open the ggml library (check 'ggml.library.path')"};
    case 3:
        return {"BACKEND_MISSING_BACKEND_SYMBOLS", "the backend library lacks symbols"};
    case 4:
        return {"BACKEND_MISSING_GGML_SYMBOLS",
                "the ggml library lacks symbols (check 'ggml.library.reg')"};
    case 5:
        return {"BACKEND_FAILED", "the backend failed"};
    case 6:
        return {"BACKEND_REGISTRATION_FAILED", "backend registration failed"};
    case 7:
        return {"BACKEND_ALREADY_INITIALIZED", "the backend is already initialized"};
    case 8:
        return {"BACKEND_NO_DEVICE", "the backend found no device"};
    case 9:
        return {"BACKEND_INIT_FAILED", "backend initialization failed"};
    default:
        return {"BACKEND_UNKNOWN", "unknown backend initialization code"};
    }
}

[[nodiscard]] constexpr CodeInfo forward_code_info(uint32_t code) noexcept {
    switch (code) {
    case 0:
        return {"FORWARD_SUCCESS", "call succeeded"};
    case 1:
        return {"FORWARD_NO_DISPATCH",
                "the host has no dispatch function (LOADLIBRARY has not succeeded)"};
    case 2:
        return {"FORWARD_TIMEOUT", "the host timed out"};
    case 3:
        return {"FORWARD_SYNC_STREAMS_FAILED", "the host failed to sync streams"};
    default:
        return {"FORWARD_BACKEND_ERROR", "the backend function returned an error"};
    }
}

} // namespace apir
