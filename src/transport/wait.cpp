// The reply wait shared by every transport, and the host's notify.
#include "apir/transport.hpp"

#include "apir/internal/futex.hpp"

#include <thread>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define APIR_CPU_RELAX() _mm_pause()
#elif defined(__aarch64__)
#define APIR_CPU_RELAX() asm volatile("yield" ::: "memory")
#else
#define APIR_CPU_RELAX() std::atomic_signal_fence(std::memory_order_seq_cst)
#endif

namespace apir {
namespace {

using namespace std::chrono;

uint32_t* word_ptr(std::span<std::byte> page) {
    return reinterpret_cast<uint32_t*>(page.data());
}

// now + d, saturated at the clock's end (d may be anything up to nanoseconds::max()).
Clock::time_point saturating_add(Clock::time_point now, nanoseconds d) {
    if (d <= nanoseconds::zero()) return now;
    const auto room = Clock::time_point::max() - now;
    if (d >= room) return Clock::time_point::max();
    return now + duration_cast<Clock::duration>(d);
}

// A sleep of at most `want`, cut to what is left before the deadline (at least 1 µs,
// so that a deadline just passed is noticed by the next look).
nanoseconds clamped(nanoseconds want, Deadline deadline, Clock::time_point now) {
    if (deadline.is_never()) return want;
    const auto left = duration_cast<nanoseconds>(deadline.time() - now);
    return std::max(std::min(want, left), nanoseconds(1000));
}

Expected<uint32_t> timed_out(Clock::time_point start) {
    return fail(
        Errc::timeout,
        fmt::format("waited {} µs", duration_cast<microseconds>(Clock::now() - start).count()));
}

} // namespace

Expected<uint32_t> wait_for_reply(std::span<std::byte> page, const WaitPolicy& policy,
                                  Deadline deadline, const WaitHooks& hooks) {
    if (page.size() < reply_header_size)
        return fail(Errc::invalid_argument, "reply page too small");
    auto word = notification_word(page);
    auto done = [&]() -> bool { return word.load(std::memory_order_acquire) != 0; };
    auto host_gone = [&] {
        return hooks.host_alive && !hooks.host_alive->load(std::memory_order_acquire);
    };
    // Read lazily: a clock read costs more than a fast host takes to answer.
    auto start = Clock::time_point::min();

    if (policy.kind == WaitPolicy::Kind::fixed_poll) {
        start = Clock::now();
        // ggml's strategy: sleep a fixed interval between looks.
        while (!done()) {
            const auto now = Clock::now();
            if (deadline.expired(now)) return timed_out(start);
            if (host_gone()) break;
            std::this_thread::sleep_for(clamped(policy.poll_interval, deadline, now));
        }
        if (done()) return word.load(std::memory_order_acquire) - 1;
        return fail(Errc::disconnected, "the host stopped before replying");
    }

    // Phase 1: spin. A fast host answers within a few hundred nanoseconds; the clock
    // is first read after 64 looks, and the spin lasts spin_for from there.
    auto spin_until = Clock::time_point::max();
    for (uint32_t i = 1;; ++i) {
        if (done()) return word.load(std::memory_order_acquire) - 1;
        if ((i & 63) == 0) {
            auto now = Clock::now();
            if (start == Clock::time_point::min()) {
                start = now;
                spin_until = saturating_add(start, policy.spin_for);
            }
            if (deadline.expired(now)) return timed_out(start);
            if (now >= spin_until) break;
            if (host_gone()) break;
        }
        APIR_CPU_RELAX();
    }

    // Phase 2: block (futex) or sleep with back-off.
    nanoseconds sleep = microseconds(1);
    while (!done()) {
        auto now = Clock::now();
        if (deadline.expired(now)) return timed_out(start);
        if (host_gone()) {
            if (done()) break;
            return fail(Errc::disconnected, "the host stopped before replying");
        }
        if (hooks.sleepers) {
            // Announce ourselves before the last look so the host's notify sees us
            // (seq_cst on both sides: either we see the word or it sees the sleeper).
            hooks.sleepers->fetch_add(1, std::memory_order_seq_cst);
            if (word.load(std::memory_order_seq_cst) == 0) {
                // Wake up now and then to check liveness and the deadline.
                detail::futex_wait(word_ptr(page), 0, clamped(milliseconds(50), deadline, now));
            }
            hooks.sleepers->fetch_sub(1, std::memory_order_seq_cst);
        } else {
            std::this_thread::sleep_for(clamped(sleep, deadline, now));
            sleep = sleep > policy.max_sleep / 2 ? policy.max_sleep : sleep * 2;
        }
    }
    return word.load(std::memory_order_acquire) - 1;
}

void notify_reply(std::span<std::byte> page, uint32_t code,
                  std::atomic<uint32_t>* sleepers) noexcept {
    notification_word(page).store(code + 1, std::memory_order_seq_cst);
    if (sleepers && sleepers->load(std::memory_order_seq_cst) != 0)
        detail::futex_wake_all(word_ptr(page));
}

} // namespace apir
