// Internal: the backed-off spin that the guest's reply wait and the loopback host
// thread's idle wait share (src/libapir/transport/wait.cpp).
#pragma once

#include "apir/transport.hpp"

#include <chrono>

namespace apir::detail {

/// One CPU-friendly pause between two looks.
void cpu_relax() noexcept;

/// Gives the CPU to a peer that runs on this CPU, unless yielding lately gave it to
/// another program instead (a yield that kept this thread off the CPU for longer than
/// max_yield_gap): then, for yield_holdoff, it does not yield and returns false, and the
/// caller blocks (the scheduler then hands the CPU to the woken peer). Process-wide,
/// timed on the steady clock.
bool yield_to_peer() noexcept;

/// The CPU this thread runs on now (-1 unknown); cheap (rseq or vDSO).
[[nodiscard]] int current_cpu() noexcept;

/// now + d, saturated at the clock's end (d may be anything up to nanoseconds::max()).
[[nodiscard]] Clock::time_point saturating_after(Clock::time_point now,
                                                 std::chrono::nanoseconds d) noexcept;

struct SpinResult {
    bool done = false;    ///< done() turned true while spinning
    bool timeout = false; ///< the deadline passed first
    /// When the spin began (the first look at the clock; min() if it was never read).
    Clock::time_point start = Clock::time_point::min();
};

/// What a spin looks at, and how it backs off.
struct SpinPlan {
    std::chrono::nanoseconds budget{0};         ///< spin at most this long
    const std::atomic<int>* peer_cpu = nullptr; ///< a peer on our CPU: yield to it at once
    Deadline deadline;
    const WaitClock* clock = nullptr;
};

/// A yield to a peer that takes longer than this gave the CPU to another program.
inline constexpr std::chrono::microseconds max_yield_gap{50};
/// How long, after such a yield, waiters block instead of yielding to a peer.
inline constexpr std::chrono::milliseconds yield_holdoff{20};

/// The timer slack of a polling wait's sleeps (PR_SET_TIMERSLACK), restored after.
inline constexpr long wait_timer_slack_ns = 1000;
/// The CPU a short polling wait may use beyond WaitPolicy::poll_cpu of its time.
inline constexpr std::chrono::microseconds poll_cpu_grace{50};

/// The sleeps of a polling wait (a host that cannot wake the waiter): each one
/// waited / sleep_divisor within [min_sleep, max_sleep], longer when the CPU of the
/// wait (the spin, counted as CPU, plus the polls) would pass poll_cpu of its time.
struct PollPlan {
    const WaitPolicy& policy;
    std::chrono::nanoseconds spun{0};       ///< the spin before the polls (all CPU)
    std::chrono::nanoseconds cpu_start{-1}; ///< the thread's CPU time then (<0 unknown)
    std::chrono::nanoseconds last_cpu{-1};  ///< at the previous poll
    std::chrono::nanoseconds last_cost{0};  ///< the CPU the previous poll cost
    /// The next sleep, `waited` into the wait, the thread's CPU time being cpu_now.
    [[nodiscard]] std::chrono::nanoseconds next(std::chrono::nanoseconds waited,
                                                std::chrono::nanoseconds cpu_now) noexcept;
};

/// Spins until done() (true), stop() (false), the budget or the deadline is over.
/// The clock is read only every 64 looks: a fast answer costs no clock read.
template <class Done, class Stop>
SpinResult spin(const SpinPlan& plan, Done done, Stop stop) {
    SpinResult r;
    if (done()) return r.done = true, r;
    if (plan.budget <= std::chrono::nanoseconds::zero()) return r;
    // A peer last seen on our own CPU can only answer once we give it the CPU.
    auto peer_here = [&] {
        return plan.peer_cpu && plan.peer_cpu->load(std::memory_order_relaxed) == current_cpu();
    };
    if (peer_here() && !yield_to_peer()) return r; // block: the peer gets the CPU
    auto until = Clock::time_point::max();
    for (uint32_t i = 1;; ++i) {
        if (done()) return r.done = true, r;
        if ((i & 63) == 0) {
            const auto now = plan.clock->now();
            if (r.start == Clock::time_point::min()) {
                r.start = now;
                until = saturating_after(now, plan.budget);
            }
            if (plan.deadline.expired(now)) return r.timeout = true, r;
            if (now >= until || stop()) return r;
            if (peer_here() && !yield_to_peer()) return r;
        } else if ((i & 15) == 0 && peer_here()) {
            if (!yield_to_peer()) return r;
        }
        cpu_relax();
    }
}

} // namespace apir::detail
