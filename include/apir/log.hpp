// Logging through fmt with a pluggable sink.
//
// Each Session and Host holds a Logger (copied from its options); the default sink
// writes to stderr. A ggml fork routes messages into ggml's logger:
//
//     apir::Logger log{[](apir::LogLevel l, std::string_view msg) { my_log(l, msg); },
//                      apir::LogLevel::info};
#pragma once

#include "apir/export.hpp"

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <optional>
#include <string_view>

#include <fmt/core.h>

namespace apir {

enum class LogLevel : uint8_t { debug, info, warn, error, off };

[[nodiscard]] constexpr std::string_view log_level_name(LogLevel l) noexcept {
    switch (l) {
    case LogLevel::debug:
        return "debug";
    case LogLevel::info:
        return "info";
    case LogLevel::warn:
        return "warn";
    case LogLevel::error:
        return "error";
    case LogLevel::off:
        return "off";
    }
    return "?";
}

/// The level log_level_name() names ("debug", "info", "warn", "error", "off"), or nullopt.
[[nodiscard]] constexpr std::optional<LogLevel> parse_log_level(std::string_view name) noexcept {
    for (auto l : {LogLevel::debug, LogLevel::info, LogLevel::warn, LogLevel::error, LogLevel::off})
        if (name == log_level_name(l)) return l;
    return std::nullopt;
}

using LogSink = std::function<void(LogLevel, std::string_view)>;

/// Writes "apir: <level>: <message>" to stderr.
inline void stderr_sink(LogLevel level, std::string_view msg) {
    fmt::print(stderr, "apir: {}: {}\n", log_level_name(level), msg);
}

class Logger {
public:
    Logger() = default;
    Logger(LogSink sink, LogLevel min_level = LogLevel::info)
        : sink_(std::move(sink)), min_(min_level) {}

    [[nodiscard]] bool enabled(LogLevel l) const noexcept { return l >= min_ && sink_; }
    void set_level(LogLevel l) noexcept { min_ = l; }

    template <class... A>
    void log(LogLevel l, fmt::format_string<A...> f, A&&... args) const {
        if (enabled(l)) sink_(l, fmt::vformat(f, fmt::make_format_args(args...)));
    }
    template <class... A>
    void debug(fmt::format_string<A...> f, A&&... a) const {
        log(LogLevel::debug, f, std::forward<A>(a)...);
    }
    template <class... A>
    void info(fmt::format_string<A...> f, A&&... a) const {
        log(LogLevel::info, f, std::forward<A>(a)...);
    }
    template <class... A>
    void warn(fmt::format_string<A...> f, A&&... a) const {
        log(LogLevel::warn, f, std::forward<A>(a)...);
    }
    template <class... A>
    void error(fmt::format_string<A...> f, A&&... a) const {
        log(LogLevel::error, f, std::forward<A>(a)...);
    }

private:
    LogSink sink_ = stderr_sink;
    LogLevel min_ = LogLevel::warn;
};

/// Keeps a message that a peer can repeat at will from flooding the log: the first
/// occurrence is logged, later ones are counted and at most one per interval is logged,
/// carrying how many were held back. Not thread-safe: the caller serializes.
///
///     uint64_t held;
///     if (dropped_.admit(held)) log.warn("dropped a command: {} ({} more)", why, held);
class RepeatLimiter {
public:
    explicit RepeatLimiter(std::chrono::nanoseconds interval = std::chrono::seconds(1)) noexcept
        : interval_(interval) {}
    /// Whether to log this occurrence; held_back: how many were not logged since the
    /// last one that was.
    [[nodiscard]] bool admit(uint64_t& held_back) noexcept {
        const auto now = std::chrono::steady_clock::now();
        if (logged_ && now - last_ < interval_) {
            ++held_;
            return false;
        }
        logged_ = true;
        last_ = now;
        held_back = held_;
        held_ = 0;
        return true;
    }

private:
    std::chrono::nanoseconds interval_;
    std::chrono::steady_clock::time_point last_{};
    bool logged_ = false;
    uint64_t held_ = 0;
};

} // namespace apir
