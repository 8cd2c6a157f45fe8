// Internal: the backed-off spin that the guest's reply wait and the loopback host
// thread's idle wait share (src/libapir/transport/wait.cpp).
#pragma once

#include "apir/transport.hpp"
#include "apir/wait.hpp"

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

/// Gives the CPU to whatever else may run on it (sched_yield), with no hold-off: for a
/// peer in another process, whose turn on the CPU is the point.
void yield_cpu() noexcept;

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
    bool yield_between_looks = false;           ///< a peer on a CPU we cannot know
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
/// The clock is read only every 64 looks (a fast answer costs no clock read), or at
/// every look where the spin yields between looks.
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
    // With a yield between looks (a system call each), the clock is read at every look.
    const uint32_t clock_mask = plan.yield_between_looks ? 0 : 63;
    for (uint32_t i = 1;; ++i) {
        if (done()) return r.done = true, r;
        if ((i & clock_mask) == 0) {
            const auto now = plan.clock->now();
            if (r.start == Clock::time_point::min()) {
                r.start = now;
                until = saturating_after(now, plan.budget);
            }
            if (plan.deadline.expired(now)) return r.timeout = true, r;
            if (now >= until || stop()) return r;
            if (plan.yield_between_looks) {
                yield_cpu();
                continue;
            }
            if (peer_here() && !yield_to_peer()) return r;
        } else if ((i & 15) == 0 && peer_here()) {
            if (!yield_to_peer()) return r;
        }
        cpu_relax();
    }
}

struct RestResult {
    bool done = false;    ///< done() turned true, during the rest or the watch
    bool timeout = false; ///< the deadline passed first
    bool rested = false;  ///< the forecast had a plan: the rest and watch happened
    Clock::time_point start = Clock::time_point::min(); ///< when the rest began (rested)
};

/// A wait's way to a reply its forecast would rest for, where the host can wake the waiter:
/// block until woken, or rest and watch, as the forecast's timing chose
/// (ArrivalForecast::rest_mode). report() tells the forecast how long the wait took.
struct RestChoice {
    ArrivalForecast::Plan plan;         ///< the forecast's (rest 0: no forecast, or no rest)
    ArrivalForecast* chooser = nullptr; ///< set: the wait is timed for the choice
    ArrivalForecast::Rest way = ArrivalForecast::Rest::watch;
    Clock::time_point began{}; ///< when the timed wait began
    void report(const WaitClock& clock) const noexcept {
        if (chooser) chooser->timed(way, clock.now() - began);
    }
};

/// The plan of `forecast` (may be null) and, where the host can wake the waiter
/// (can_block) and the plan rests, the way chosen for this wait.
inline RestChoice choose_rest(ArrivalForecast* forecast, bool can_block, const WaitClock& clock) {
    RestChoice c;
    if (!forecast) return c;
    c.plan = forecast->plan();
    if (!can_block || c.plan.rest <= std::chrono::nanoseconds::zero()) return c;
    c.chooser = forecast;
    c.way = forecast->rest_mode();
    c.began = clock.now();
    return c;
}

/// Whether the command's forecast is sure its reply comes after the longest spin: its
/// low estimate (what the calls have all taken, about) is past spin_for.
inline bool spin_cannot_win(const ArrivalForecast* forecast,
                            std::chrono::nanoseconds spin_for) noexcept {
    return forecast && forecast->sure_estimate() > spin_for;
}

/// A wait's first phase where a forecast knows when the event is due (its plan): rests
/// until the plan's rest has passed since now, with rest(d) (blocks or sleeps at most d; may return
/// early, e.g. woken by the event), then spins at most the plan's watch. Teaches the
/// forecast what it saw: the time the event came when the watch caught it, or a time
/// earlier than expected when the rest did; and teaches the wake-up lateness.
template <class Done, class Rest, class Stop>
RestResult rest_then_watch(ArrivalForecast& forecast, const ArrivalForecast::Plan& plan,
                           const WaitClock& clock, Deadline deadline,
                           const std::atomic<int>* peer_cpu, bool yield_between_looks, Done done,
                           Rest rest, Stop stop) {
    RestResult r;
    if (plan.rest <= std::chrono::nanoseconds::zero() || done()) return r;
    r.rested = true;
    const auto start = r.start = clock.now();
    const auto due = saturating_after(start, plan.rest);
    auto now = start;
    while (!done() && now < due && !stop()) {
        if (deadline.expired(now)) return r.timeout = true, r;
        auto left = std::chrono::duration_cast<std::chrono::nanoseconds>(due - now);
        if (!deadline.is_never())
            left = std::max(std::min(left, std::chrono::duration_cast<std::chrono::nanoseconds>(
                                               deadline.time() - now)),
                            std::chrono::nanoseconds(1000));
        rest(left);
        now = clock.now();
    }
    // How late the rest ended (one the event ended after its end tells at least how late
    // the timer was not yet).
    if (now >= due) ArrivalForecast::note_wake(plan.rest, now - due);
    if (done()) {
        // The event came during the rest, at some time before this look. Woken before the
        // rest's end (by the event, or a look between slices): about then, if that is
        // earlier than expected. After it: the rest ended too late, so the next one
        // ends a lead earlier (learning the look's time would push it later still).
        const auto took = now - start;
        const auto est = forecast.estimate();
        if (now >= due)
            forecast.observe(std::max(std::min(took, est) - (est - plan.rest),
                                      std::chrono::nanoseconds::zero()));
        else if (took < est)
            forecast.observe(took);
        return r.done = true, r;
    }
    SpinPlan watch;
    watch.budget = plan.watch;
    watch.peer_cpu = peer_cpu;
    watch.yield_between_looks = yield_between_looks;
    watch.deadline = deadline;
    watch.clock = &clock;
    const auto spun = spin(watch, done, stop);
    if (spun.timeout) return r.timeout = true, r;
    if (spun.done) {
        forecast.observe(clock.now() - start);
        r.done = true;
    }
    return r;
}

} // namespace apir::detail
