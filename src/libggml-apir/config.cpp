#include "config.hpp"

#include <charconv>
#include <cstdlib>

#include <fmt/format.h>

namespace apir::ggml_remote {

Expected<HostConfig> parse_config_string(std::string_view text) {
    HostConfig out;
    if (auto r = parse_host_config(text, ';', out); !r)
        return fail(std::move(r).error().with_context("APIR_GGML_CONFIG"));
    return out;
}

namespace {

Expected<std::chrono::milliseconds> parse_ms(const char* var, std::string_view v,
                                             bool zero_allowed = false) {
    uint64_t n = 0;
    auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
    if (ec != std::errc{} || p != v.data() + v.size() || (n == 0 && !zero_allowed) ||
        n > (uint64_t{1} << 40))
        return fail(Errc::invalid_argument,
                    fmt::format("{}='{}': expected a {} number of milliseconds", var, v,
                                zero_allowed ? "whole" : "positive"));
    return std::chrono::milliseconds(static_cast<int64_t>(n));
}

Expected<LogLevel> parse_level(std::string_view v) {
    if (auto l = parse_log_level(v)) return *l;
    return fail(Errc::invalid_argument,
                fmt::format("APIR_GGML_LOG='{}': expected debug, info, warn, error or off", v));
}

} // namespace

Expected<BackendConfig> config_from_environment(const EnvLookup& env) {
    BackendConfig c;
    auto get = [&](const char* name) -> std::optional<std::string_view> {
        const char* v = env(name);
        if (!v) return std::nullopt;
        return std::string_view(v);
    };

    if (auto t = get("APIR_GGML_TRANSPORT")) {
        if (*t == "virtgpu") {
            c.transport = TransportKind::virtgpu;
        } else if (*t == "loopback") {
            c.transport = TransportKind::loopback;
        } else if (*t == "vtest") {
            c.transport = TransportKind::vtest;
        } else {
            return fail(
                Errc::invalid_argument,
                fmt::format("APIR_GGML_TRANSPORT='{}': expected virtgpu, loopback or vtest", *t));
        }
    }
    if (auto n = get("APIR_GGML_NODE")) c.node = std::string(*n);
    if (auto v = get("APIR_GGML_VTEST_SOCKET")) c.vtest_socket = std::string(*v);
    if (auto cfg = get("APIR_GGML_CONFIG")) {
        auto m = parse_config_string(*cfg);
        if (!m) return Unexpected{std::move(m).error()};
        c.host_config = std::move(*m);
    }
    if (auto lib = get("APIR_GGML_BACKEND_LIBRARY")) c.backend_library = std::string(*lib);
    if (auto mode = get("APIR_GGML_LOOPBACK_MODE")) {
        if (*mode == "threaded") {
            c.loopback_threaded = true;
        } else if (*mode == "inline") {
            c.loopback_threaded = false;
        } else {
            return fail(
                Errc::invalid_argument,
                fmt::format("APIR_GGML_LOOPBACK_MODE='{}': expected threaded or inline", *mode));
        }
    }
    if (auto v = get("APIR_GGML_TIMEOUT_MS")) {
        auto ms = parse_ms("APIR_GGML_TIMEOUT_MS", *v);
        if (!ms) return Unexpected{std::move(ms).error()};
        c.call_timeout = *ms;
    }
    if (auto v = get("APIR_GGML_COMPUTE_TIMEOUT_MS")) {
        auto ms = parse_ms("APIR_GGML_COMPUTE_TIMEOUT_MS", *v);
        if (!ms) return Unexpected{std::move(ms).error()};
        c.compute_timeout = *ms;
    }
    if (auto v = get("APIR_GGML_MEMORY_MAX_AGE_MS")) {
        auto ms = parse_ms("APIR_GGML_MEMORY_MAX_AGE_MS", *v, true);
        if (!ms) return Unexpected{std::move(ms).error()};
        c.memory_max_age = *ms;
    }
    if (auto v = get("APIR_GGML_ZERO_COPY")) {
        if (*v == "auto")
            c.zero_copy = true;
        else if (*v == "off")
            c.zero_copy = false;
        else
            return fail(Errc::invalid_argument,
                        fmt::format("APIR_GGML_ZERO_COPY='{}': expected auto or off", *v));
    }
    if (auto v = get("APIR_GGML_LOG")) {
        auto l = parse_level(*v);
        if (!l) return Unexpected{std::move(l).error()};
        c.log_level = *l;
    }

    if (c.transport == TransportKind::loopback) {
        // The library named by its own variable wins over one given in APIR_GGML_CONFIG.
        if (!c.backend_library.empty())
            c.host_config["apir.load_library.path"] = c.backend_library;
        else if (auto it = c.host_config.find("apir.load_library.path"); it != c.host_config.end())
            c.backend_library = it->second;
        if (c.backend_library.empty())
            return fail(Errc::invalid_argument,
                        "APIR_GGML_TRANSPORT=loopback needs APIR_GGML_BACKEND_LIBRARY (the APIR "
                        "backend library to load, e.g. libggml-virtgpu-backend.so)");
    }
    return c;
}

Expected<BackendConfig> config_from_environment() {
    return config_from_environment([](const char* name) { return std::getenv(name); });
}

} // namespace apir::ggml_remote
