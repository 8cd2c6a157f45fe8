// Internal: futex wait/wake on a 32-bit word (process-private).
#pragma once

#include <chrono>
#include <climits>
#include <cstdint>
#include <ctime>

#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

namespace apir::detail {

/// Blocks while *word == expected, at most `timeout` (nanoseconds::max(): no limit).
/// Spurious returns are fine: callers look again.
inline void futex_wait(const void* word, uint32_t expected, std::chrono::nanoseconds timeout) {
    timespec ts{};
    timespec* tsp = nullptr;
    if (timeout != std::chrono::nanoseconds::max()) {
        ts.tv_sec = static_cast<time_t>(timeout.count() / 1'000'000'000);
        ts.tv_nsec = static_cast<long>(timeout.count() % 1'000'000'000);
        tsp = &ts;
    }
    syscall(SYS_futex, word, FUTEX_WAIT_PRIVATE, expected, tsp, nullptr, 0);
}

inline void futex_wake_all(const void* word) {
    syscall(SYS_futex, word, FUTEX_WAKE_PRIVATE, INT_MAX, nullptr, nullptr, 0);
}

} // namespace apir::detail
