// How a guest thread waits for a reply: the clock and sleeps of the wait (WaitClock),
// the policy (WaitPolicy: spin, then block or poll) and what waits learn (SpinBudget).
// The transports implement the wait itself (src/libapir/transport/wait.cpp).
#pragma once

#include "apir/choice_tuner.hpp"
#include "apir/deadline.hpp"
#include "apir/export.hpp"

#include <atomic>
#include <chrono>
#include <cstdint>
#include <mutex>

namespace apir {

class ArrivalForecast;

/// The time source and the sleeps of the wait path (Cap'n Proto KJ's MonotonicClock
/// idea). WaitClock::system() is the steady clock, nanosleep and a futex; a test injects
/// one whose time advances when the waiter sleeps, so that deadline tests are exact and
/// take no real time.
class APIR_EXPORT WaitClock {
public:
    [[nodiscard]] virtual Clock::time_point now() const noexcept = 0;
    /// Sleeps about d (a wait that cannot be woken).
    virtual void sleep(std::chrono::nanoseconds d) const noexcept = 0;
    /// Blocks while *word == expected, at most d; may return early (callers look again).
    virtual void block(const uint32_t* word, uint32_t expected,
                       std::chrono::nanoseconds d) const noexcept = 0;
    /// The CPU time the calling thread has used (the system clock: its
    /// CLOCK_THREAD_CPUTIME_ID); negative when unknown (the default), which leaves the
    /// polling wait without a CPU budget. A polling wait reads it once per sleep.
    [[nodiscard]] virtual std::chrono::nanoseconds cpu_time() const noexcept {
        return std::chrono::nanoseconds(-1);
    }
    /// The real clock.
    [[nodiscard]] static const WaitClock& system() noexcept;

protected:
    ~WaitClock() = default;
};

/// How a guest thread waits for the notification word.
///
/// adaptive (the default): spin, then block (futex) where the transport can be woken,
/// otherwise poll: each sleep is 1/sleep_divisor of the time waited so far (so a reply
/// is noticed late by about that share of the call, plus a wake-up), at least
/// min_sleep, at most max_sleep, and longer when the polls' CPU would pass poll_cpu of
/// the wait's time (WaitClock::cpu_time); the thread's timer slack is lowered to 1 µs
/// for these sleeps and restored (else each short sleep overshoots by the default 50
/// µs). spin_for is the longest
/// spin; where the transport learns (SpinBudget), the spin is as long as spinning has
/// lately paid: shorter, or none, when replies keep arriving only after the spin gave
/// up (a slow host, or a host that needs this CPU). The spin backs off: it pauses
/// between looks, yields the CPU to a host last seen on the waiter's own CPU, and ends
/// when a yield kept it off the CPU for long (another program had it).
/// fixed_poll: sleep poll_interval between checks, as ggml does (a baseline).
/// Every sleep of every policy is cut to the deadline, and any duration is valid
/// (spin_for = nanoseconds::max() spins until the reply or the deadline).
struct WaitPolicy {
    enum class Kind : uint8_t { adaptive, fixed_poll };
    Kind kind = Kind::adaptive;
    std::chrono::nanoseconds spin_for = std::chrono::microseconds(50);
    std::chrono::nanoseconds max_sleep = std::chrono::microseconds(200);
    /// The polling wait's shortest sleep, and its sleeps' share of the time waited so
    /// far (1/64: a reply is noticed at most ~1.6 % of the call late, plus a wake-up).
    std::chrono::nanoseconds min_sleep = std::chrono::microseconds(10);
    uint32_t sleep_divisor = 64;
    /// The polling wait's CPU (spin included) stays within this share of its time,
    /// plus 50 µs (a short wait may spin): polls that cost more sleep longer, up to
    /// 4 x max_sleep.
    double poll_cpu = 0.10;
    std::chrono::nanoseconds poll_interval = std::chrono::microseconds(15);
    /// The clock of the wait and of the Session's deadlines; null: WaitClock::system().
    const WaitClock* clock = nullptr;
    /// When this command's reply is due, learned from its earlier calls (a Session sets
    /// its command's for each call; null: none). Once it is sure enough, the adaptive
    /// wait rests (blocks, or sleeps) until shortly before the reply is due, spins
    /// through the time it is due, and only then falls back to the spin-then-block
    /// above: a long command is noticed as it ends, without a wake-up after it and
    /// without spinning through it. Every wait teaches it how long the call took.
    ArrivalForecast* forecast = nullptr;

    static WaitPolicy adaptive() noexcept { return {}; }
    static WaitPolicy spin_only() noexcept {
        WaitPolicy p;
        p.spin_for = std::chrono::nanoseconds::max();
        return p;
    }
    static WaitPolicy
    fixed_poll(std::chrono::nanoseconds every = std::chrono::microseconds(15)) noexcept {
        WaitPolicy p;
        p.kind = Kind::fixed_poll;
        p.poll_interval = every;
        return p;
    }
    [[nodiscard]] const WaitClock& time() const noexcept {
        return clock ? *clock : WaitClock::system();
    }
};

/// What a waiter learns from its waits: how long spinning pays. A transport keeps one
/// for its callers (and the loopback host thread one for its idle wait); lock-free,
/// shared by threads. A wait that got its answer while spinning keeps the budget (or
/// raises it to a few times what it spun); one whose spin ran out sets it to what
/// would have won (1.5 x the answer's time) when that is within the longest spin,
/// else halves it, down to 0 below 1 µs. At 0 every 16th wait still spins a little
/// (a probe, 4 µs), so a host that became fast again is noticed; a probe that loses
/// doubles the next one (up to the longest spin), and a won wait makes it 4 µs again,
/// so a host a little slower than the first probe is found too.
class APIR_EXPORT SpinBudget {
public:
    /// The spin to try now, at most max.
    [[nodiscard]] std::chrono::nanoseconds next(std::chrono::nanoseconds max) noexcept;
    /// The answer came while spinning, `spun` after the spin began.
    void won(std::chrono::nanoseconds spun, std::chrono::nanoseconds max) noexcept;
    /// The spin ran out; the answer came `took` after the spin began.
    void lost(std::chrono::nanoseconds took, std::chrono::nanoseconds max) noexcept;
    /// The budget learned so far (nanoseconds::max() before the first lost wait).
    [[nodiscard]] std::chrono::nanoseconds current() const noexcept;

    static constexpr std::chrono::nanoseconds floor = std::chrono::microseconds(1);
    static constexpr std::chrono::nanoseconds probe = std::chrono::microseconds(4);
    static constexpr uint32_t probe_every = 16;

private:
    std::atomic<int64_t> budget_ns_{-1}; // -1: nothing learned yet (spin the maximum)
    std::atomic<uint32_t> waits_{0};
    std::atomic<int64_t> probe_ns_{probe.count()}; // the next probe's length
    std::atomic<bool> probing_{false};             // a probe was handed out, not yet decided
};

/// When something that recurs is due: a command's reply after its submission (a Session
/// keeps one per command), the next command after a reply (the loopback host thread).
/// Learned from what is observed, lock-free, shared by threads:
/// - the estimate is a low one: a shorter observation lowers it at once, a longer one
///   raises it by 1/8 of the difference, at most by a quarter of it plus 50 µs (a long
///   idle spell or one slow call moves it little);
/// - the spread is the mean distance of the observations above the estimate;
/// - plan() says nothing (rest 0) until `sure_after` observations, for events due in
///   less than `min_rest` (a spin catches those), and where the lead (below) is more
///   than a quarter of the estimate (waking up would cost more than resting saves).
/// The rest ends `lead` before the estimate: what rests that long overshoot lately (the
/// process-wide wake-up lateness, learned by the waits that rest) plus a margin; the
/// watch that follows covers the lead and twice the spread, at most lead plus an eighth of
/// the estimate (so a wait that rests spins about 10 % of the time it waits).
///
/// A transport whose host can wake the waiter (the loopback's futex, vtest's PING
/// answer) has a second way to wait for a reply the forecast would rest for: block until
/// the host wakes it (Rest::block). Which is faster depends on what else runs: where the
/// host's threads need every CPU, the rest's timer wake-up and the watch's spin take a
/// CPU from them (a token of a small language model through the loopback, the host on
/// two threads, two CPUs: 0.81 of the local CPU resting and watching, 0.98 blocking);
/// where a CPU is free, the watch saves the wake-up (the same with the host on one
/// thread: 1,095 against 1,023 tokens/s). So the forecast times the waits made each way
/// and keeps the faster (choice_tuner.hpp: block is the safe candidate, the watch is
/// chosen only when it was faster on every run; that choice takes a lock). A wait over
/// twice the estimate (a call of another kind with the same command: a prompt's graph
/// among a token's) is not timed in a measurement, and counts at most 4 times the
/// estimate between them. When the calls themselves change kind (their mean, typical(),
/// moves past twice, or under half, what it was when the timing began: a prompt's graphs,
/// then a token's), the choice is dropped: the waits block, and both ways are timed again
/// after 20 ms of them (ChoiceTuner::start_over), once the host has settled on the new
/// calls (it times its own thread counts on a graph's first runs). The first waits timed
/// start the same way. The mean moves little for one call of another kind, so calls of
/// two kinds mixed do not start the timing over and over.
class APIR_EXPORT ArrivalForecast {
public:
    struct Plan {
        std::chrono::nanoseconds rest{0};  ///< rest this long first (0: do not rest)
        std::chrono::nanoseconds watch{0}; ///< then spin at most this long
    };
    /// How a wait that rests, where the host can wake it, waits.
    enum class Rest : uint8_t {
        block, ///< blocks until the host wakes it (no CPU while the host works)
        watch, ///< rests until shortly before the reply is due, then spins through it
    };
    [[nodiscard]] Plan plan() const noexcept;
    /// The way for the next wait that rests (by the timed choice above; in a
    /// measurement, the way being timed).
    [[nodiscard]] Rest rest_mode() const noexcept;
    /// The way the last measurement chose (Rest::block before one).
    [[nodiscard]] Rest rest_chosen() const noexcept;
    /// A wait that rested the `used` way took `took`, from its start to the reply noticed.
    void timed(Rest used, std::chrono::nanoseconds took) noexcept;
    /// The timed choice's measurements completed, and how often it went back to
    /// blocking without one.
    [[nodiscard]] unsigned rest_measurements() const noexcept;
    [[nodiscard]] unsigned rest_fallbacks() const noexcept;
    /// The event came `took` after the start.
    void observe(std::chrono::nanoseconds took) noexcept;
    /// The estimate so far (0 before the first observation) and the spread.
    [[nodiscard]] std::chrono::nanoseconds estimate() const noexcept;
    /// The estimate once the forecast is sure (after sure_after observations), else 0.
    [[nodiscard]] std::chrono::nanoseconds sure_estimate() const noexcept;
    /// The mean of the observations, each weighing 1/8 (0 before the first): what the
    /// calls take, as the timed choice follows it.
    [[nodiscard]] std::chrono::nanoseconds typical() const noexcept;
    [[nodiscard]] std::chrono::nanoseconds spread() const noexcept;

    /// A rest of `rest` that woke `late` after it was meant to end (clamped to [0, 1 ms]).
    static void note_wake(std::chrono::nanoseconds rest, std::chrono::nanoseconds late) noexcept;
    /// What rests about as long as `rest` have lately overshot (a high estimate, by
    /// length: longer idles wake later; starts at 100 µs).
    [[nodiscard]] static std::chrono::nanoseconds
    wake_lateness(std::chrono::nanoseconds rest) noexcept;

    static constexpr std::chrono::nanoseconds min_rest = std::chrono::microseconds(150);
    static constexpr std::chrono::nanoseconds margin = std::chrono::microseconds(10);
    static constexpr uint32_t sure_after = 3;

private:
    std::atomic<int64_t> estimate_ns_{0};
    std::atomic<int64_t> spread_ns_{0};
    std::atomic<int64_t> typical_ns_{0};
    std::atomic<uint32_t> seen_{0};
    mutable std::mutex rest_mu_;    // guards rest_choice_ and timing_basis_ns_
    ChoiceTuner<2> rest_choice_{2}; // candidate 0: Rest::block, 1: Rest::watch
    int64_t timing_basis_ns_ = 0;   // typical() when the timing began
};

} // namespace apir
