// How libggml-apir connects: the environment variables it reads, parsed into a
// BackendConfig (no ggml headers needed, so this part is tested everywhere).
//
//   APIR_GGML_TRANSPORT        virtgpu (default), loopback or vtest
//   APIR_GGML_VTEST_SOCKET     vtest: virgl_test_server's socket (default: $VTEST_SOCKET_NAME,
//                              else /tmp/.virgl_test); the host's configuration is the server's
//   APIR_GGML_NODE             virtgpu: render node to use (default: the first usable one)
//   GGML_REMOTING_USE_APIR_CAPSET  virtgpu: present = the APIR capset only (as ggml reads it)
//   APIR_GGML_BACKEND_LIBRARY  loopback: the APIR backend library the in-process host loads
//                              (apir.load_library.path), e.g. libggml-virtgpu-backend.so
//   APIR_GGML_CONFIG           loopback: more host configuration, "key=value;key=value"
//                              (e.g. ggml.library.path=...;ggml.library.reg=ggml_backend_cpu_reg)
//   APIR_GGML_LOOPBACK_MODE    loopback: threaded (default) or inline
//   APIR_GGML_TIMEOUT_MS       deadline of every call except graph_compute (default 30000)
//   APIR_GGML_COMPUTE_TIMEOUT_MS  deadline of graph_compute (default: none, like ggml)
//   APIR_GGML_LOG              debug, info, warn (default), error or off: what apir itself logs
//   APIR_GGML_MEMORY_MAX_AGE_MS  how old the host's free/total memory may be when
//                              get_memory answers it again without a call (default 1000;
//                              0: a call each time); a buffer made or freed renews it
//   APIR_GGML_ZERO_COPY        auto (default): buffers in shared memory, set/get/memset
//                              without a call, when the host offers it (apir's host
//                              backend does; ggml's does not); off: every transfer staged
#pragma once

#include "apir/error.hpp"
#include "apir/host.hpp"
#include "apir/log.hpp"

#include <chrono>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>

namespace apir::ggml_remote {

enum class TransportKind : uint8_t { virtgpu, loopback, vtest };

struct BackendConfig {
    TransportKind transport = TransportKind::virtgpu;
    /// virtgpu: the render node; empty = the first usable one.
    std::string node;
    /// loopback: the APIR backend library (apir.load_library.path).
    std::string backend_library;
    /// loopback: the host's configuration (APIR_GGML_CONFIG, plus apir.load_library.path).
    HostConfig host_config;
    bool loopback_threaded = true;
    /// vtest: the server's socket; empty = the transport's default.
    std::string vtest_socket;
    std::chrono::milliseconds call_timeout{30000};
    std::optional<std::chrono::milliseconds> compute_timeout;
    LogLevel log_level = LogLevel::warn;
    /// Zero-copy buffers when the host offers them (APIR_GGML_ZERO_COPY=auto).
    bool zero_copy = true;
    /// get_memory answers from the host's last answer while it is younger than this (and
    /// no buffer of the device was made or freed since); 0: a call each time.
    std::chrono::milliseconds memory_max_age{1000};
};

/// Reads one environment variable; null when unset.
using EnvLookup = std::function<const char*(const char*)>;

/// "k=v;k=v" into a map. Empty items are skipped; an item without '=' or with an
/// empty key is an INVALID_ARGUMENT naming it. Keys and values are taken verbatim
/// (no trimming), so paths with spaces work.
[[nodiscard]] Expected<HostConfig> parse_config_string(std::string_view text);

/// The configuration from the environment; an error names the variable and the fix.
[[nodiscard]] Expected<BackendConfig> config_from_environment(const EnvLookup& env);
/// Same, from the process environment (getenv).
[[nodiscard]] Expected<BackendConfig> config_from_environment();

} // namespace apir::ggml_remote
