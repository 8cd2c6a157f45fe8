// The reply wait shared by every transport, its spin budget and clock, and the host's
// notify.
#include "apir/reply_page.hpp"

#include "apir/internal/futex.hpp"
#include "apir/internal/spin.hpp"

#include <algorithm>
#include <array>
#include <thread>

#include <sched.h>
#include <sys/prctl.h>
#include <time.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define APIR_CPU_RELAX() _mm_pause()
#elif defined(__aarch64__)
#define APIR_CPU_RELAX() asm volatile("yield" ::: "memory")
#else
#define APIR_CPU_RELAX() std::atomic_signal_fence(std::memory_order_seq_cst)
#endif

namespace apir {

using namespace std::chrono;

namespace detail {

void cpu_relax() noexcept {
    APIR_CPU_RELAX();
}
namespace {
// Until when yields to a peer are held off (steady-clock nanoseconds; 0: not held off).
std::atomic<int64_t> g_yield_holdoff_until{0};
int64_t ticks(Clock::time_point t) {
    return duration_cast<nanoseconds>(t.time_since_epoch()).count();
}
} // namespace
// A yield is a real-time event: it is timed on the steady clock whatever clock the wait
// runs on (a test clock must not decide, for the whole process, whether yields pay).
bool yield_to_peer() noexcept {
    const auto before = Clock::now();
    if (ticks(before) < g_yield_holdoff_until.load(std::memory_order_relaxed)) return false;
    sched_yield();
    const auto after = Clock::now();
    if (after - before <= max_yield_gap) return true;
    g_yield_holdoff_until.store(ticks(after + yield_holdoff), std::memory_order_relaxed);
    return false;
}
void yield_cpu() noexcept {
    sched_yield();
}
int current_cpu() noexcept {
    return sched_getcpu();
}
Clock::time_point saturating_after(Clock::time_point now, nanoseconds d) noexcept {
    if (d <= nanoseconds::zero()) return now;
    const auto room = Clock::time_point::max() - now;
    if (d >= room) return Clock::time_point::max();
    return now + duration_cast<Clock::duration>(d);
}

nanoseconds PollPlan::next(nanoseconds waited, nanoseconds cpu_now) noexcept {
    const auto lo = std::max(policy.min_sleep, nanoseconds(1000));
    const auto hi = std::max(policy.max_sleep, lo);
    const uint32_t div = std::max<uint32_t>(policy.sleep_divisor, 1);
    // As long as lateness allows: a share of the time waited so far.
    auto s = std::clamp<nanoseconds>(waited / div, lo, hi);
    if (cpu_start >= nanoseconds::zero() && cpu_now >= nanoseconds::zero() && policy.poll_cpu > 0) {
        const auto used = spun + (cpu_now - cpu_start);
        if (last_cpu >= nanoseconds::zero()) last_cost = cpu_now - last_cpu;
        last_cpu = cpu_now;
        // The shortest sleep after which (CPU so far + the next poll's cost) is within
        // the share: used + cost <= poll_cpu * (waited + s) + grace.
        const double need = double((used + last_cost - poll_cpu_grace).count()) / policy.poll_cpu -
                            double(waited.count());
        if (need > double(s.count()))
            s = std::min(nanoseconds(int64_t(std::min(need, 1e15))), 4 * hi);
    }
    return s;
}

} // namespace detail

namespace {

class SystemClock final : public WaitClock {
public:
    Clock::time_point now() const noexcept override { return Clock::now(); }
    void sleep(nanoseconds d) const noexcept override { std::this_thread::sleep_for(d); }
    void block(const uint32_t* word, uint32_t expected, nanoseconds d) const noexcept override {
        detail::futex_wait(word, expected, d);
    }
    nanoseconds cpu_time() const noexcept override {
        timespec ts{};
        if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) != 0) return nanoseconds(-1);
        return seconds(ts.tv_sec) + nanoseconds(ts.tv_nsec);
    }
};

// Lowers the calling thread's timer slack to 1 µs while a polling wait sleeps, and
// restores it: with the default 50 µs, every short sleep overshoots by up to that much.
class TimerSlack {
public:
    TimerSlack() = default;
    TimerSlack(const TimerSlack&) = delete;
    TimerSlack& operator=(const TimerSlack&) = delete;
    void lower() noexcept {
        if (old_ != 0) return;
        const int old = prctl(PR_GET_TIMERSLACK, 0, 0, 0, 0);
        if (old <= detail::wait_timer_slack_ns) return old_ = -1, void();
        if (prctl(PR_SET_TIMERSLACK, detail::wait_timer_slack_ns, 0, 0, 0) != 0)
            return old_ = -1, void();
        old_ = old;
    }
    ~TimerSlack() {
        if (old_ > 0) prctl(PR_SET_TIMERSLACK, static_cast<unsigned long>(old_), 0, 0, 0);
    }

private:
    long old_ = 0; // 0: not lowered yet; -1: left alone; else the slack to restore
};

uint32_t* word_ptr(std::span<std::byte> page) {
    return reinterpret_cast<uint32_t*>(page.data());
}

// A sleep of at most `want`, cut to what is left before the deadline (at least 1 µs,
// so that a deadline just passed is noticed by the next look).
nanoseconds clamped(nanoseconds want, Deadline deadline, Clock::time_point now) {
    if (deadline.is_never()) return want;
    const auto left = duration_cast<nanoseconds>(deadline.time() - now);
    return std::max(std::min(want, left), nanoseconds(1000));
}

Expected<uint32_t> timed_out(const WaitClock& clock, Clock::time_point start) {
    return fail(
        Errc::timeout,
        fmt::format("waited {} µs", duration_cast<microseconds>(clock.now() - start).count()));
}

} // namespace

const WaitClock& WaitClock::system() noexcept {
    static const SystemClock clock;
    return clock;
}

// --- SpinBudget

nanoseconds SpinBudget::next(nanoseconds max) noexcept {
    if (max <= nanoseconds::zero()) return nanoseconds::zero();
    const int64_t b = budget_ns_.load(std::memory_order_relaxed);
    if (b < 0) return max;
    if (b == 0) {
        // Spinning has not paid lately: now and then, look whether it would again.
        if (waits_.fetch_add(1, std::memory_order_relaxed) % probe_every == 0) {
            probing_.store(true, std::memory_order_relaxed);
            return std::min(max, nanoseconds(probe_ns_.load(std::memory_order_relaxed)));
        }
        return nanoseconds::zero();
    }
    return std::min(max, nanoseconds(b));
}

void SpinBudget::won(nanoseconds spun, nanoseconds max) noexcept {
    probing_.store(false, std::memory_order_relaxed);
    probe_ns_.store(probe.count(), std::memory_order_relaxed);
    const int64_t b = budget_ns_.load(std::memory_order_relaxed);
    if (b < 0) return; // still the maximum
    const int64_t want =
        std::min<int64_t>(max.count(), std::max<int64_t>(4 * spun.count(), 2 * floor.count()));
    if (want > b) budget_ns_.store(want, std::memory_order_relaxed);
}

void SpinBudget::lost(nanoseconds took, nanoseconds max) noexcept {
    // A probe that lost: the next one spins twice as long (a host that answers in 6 µs
    // is never caught by 4 µs probes, and the answers' times, slept through, cannot
    // tell how long it really took).
    if (probing_.exchange(false, std::memory_order_relaxed)) {
        const int64_t p = probe_ns_.load(std::memory_order_relaxed);
        probe_ns_.store(std::min<int64_t>(max.count(), 2 * p), std::memory_order_relaxed);
    }
    int64_t b = budget_ns_.load(std::memory_order_relaxed);
    if (b < 0) b = max.count();
    // An answer soon after the spin gave up: a little more spin would have won it.
    const int64_t would_win = took.count() + took.count() / 2;
    if (took > nanoseconds::zero() && would_win <= max.count() && would_win > b)
        b = would_win;
    else
        b /= 2;
    if (b < floor.count()) b = 0;
    budget_ns_.store(b, std::memory_order_relaxed);
}

nanoseconds SpinBudget::current() const noexcept {
    const int64_t b = budget_ns_.load(std::memory_order_relaxed);
    return b < 0 ? nanoseconds::max() : nanoseconds(b);
}

// --- ArrivalForecast

namespace {
// What rests overshoot lately (ns), by the rest's length (a sleep of 100 µs overshoots by
// 30 µs on a virtual machine, one of 50 ms by 150: the longer the idle, the deeper it
// goes): a machine's wake-up latency, so process-wide. Bucket k holds rests shorter
// than 128 µs x 4^k (the last one, all longer).
constexpr size_t wake_buckets = 6;
std::array<std::atomic<int64_t>, wake_buckets> g_wake_late_ns{100'000, 100'000, 100'000,
                                                              100'000, 100'000, 100'000};
constexpr int64_t max_wake_late_ns = 1'000'000;
// An estimate rises by at most a quarter of itself plus this per observation.
constexpr int64_t rise_floor_ns = 50'000;
std::atomic<int64_t>& wake_bucket(nanoseconds rest) {
    int64_t bound = 128'000;
    size_t k = 0;
    while (k + 1 < wake_buckets && rest.count() >= bound)
        ++k, bound *= 4;
    return g_wake_late_ns[k];
}
} // namespace

void ArrivalForecast::note_wake(nanoseconds rest, nanoseconds late) noexcept {
    // A high estimate: a later wake-up raises it by a quarter of the difference (one
    // far off counts as twice the estimate), an earlier one lowers it by 1/16 (a rest
    // that ends after the reply costs a wake-up more; one that ends early, some spin).
    auto& b = wake_bucket(rest);
    const int64_t g = b.load(std::memory_order_relaxed);
    const int64_t l =
        std::clamp<int64_t>(late.count(), 0, std::min(2 * g + 20'000, max_wake_late_ns));
    b.store(l > g ? g + (l - g) / 4 : g - (g - l) / 16, std::memory_order_relaxed);
}

nanoseconds ArrivalForecast::wake_lateness(nanoseconds rest) noexcept {
    return nanoseconds(wake_bucket(rest).load(std::memory_order_relaxed));
}

ArrivalForecast::Plan ArrivalForecast::plan() const noexcept {
    if (seen_.load(std::memory_order_relaxed) < sure_after) return {};
    const int64_t est = estimate_ns_.load(std::memory_order_relaxed);
    if (est < min_rest.count()) return {};
    // Resting pays where waking up is a small part of the wait.
    const int64_t lead = wake_lateness(nanoseconds(est)).count() + margin.count();
    if (lead > est / 4) return {};
    const int64_t watch = lead + std::min(2 * spread_ns_.load(std::memory_order_relaxed), est / 8);
    return {nanoseconds(est - lead), nanoseconds(watch)};
}

void ArrivalForecast::observe(nanoseconds took) noexcept {
    const int64_t t = std::max<int64_t>(took.count(), 0);
    const uint32_t n = seen_.load(std::memory_order_relaxed);
    if (n != UINT32_MAX) seen_.store(n + 1, std::memory_order_relaxed);
    const int64_t est = estimate_ns_.load(std::memory_order_relaxed);
    const int64_t typ = typical_ns_.load(std::memory_order_relaxed);
    typical_ns_.store(n == 0 ? t : typ + (t - typ) / 8, std::memory_order_relaxed);
    if (n == 0) {
        estimate_ns_.store(t, std::memory_order_relaxed);
        return;
    }
    const int64_t above = t - est;
    if (above <= 0)
        estimate_ns_.store(t, std::memory_order_relaxed);
    else
        estimate_ns_.store(est + std::min(above / 8, est / 4 + rise_floor_ns),
                           std::memory_order_relaxed);
    const int64_t dist = std::min(above < 0 ? -above : above, est);
    const int64_t sp = spread_ns_.load(std::memory_order_relaxed);
    spread_ns_.store(sp + (dist - sp) / 8, std::memory_order_relaxed);
}

ArrivalForecast::Rest ArrivalForecast::rest_mode() const noexcept {
    const std::lock_guard lk(rest_mu_);
    return static_cast<Rest>(rest_choice_.next());
}

void ArrivalForecast::timed(Rest used, nanoseconds took) noexcept {
    const std::lock_guard lk(rest_mu_);
    const int64_t est = estimate_ns_.load(std::memory_order_relaxed);
    // The calls changed kind (their mean went past twice, or under half, what it was when
    // the timing began: a prompt's graphs, then a token's): what was timed, and a choice
    // made on it, no longer apply. Block, and time both ways again once the new calls
    // have settled (the host may be timing its own choices on them: its threads). The
    // first calls timed start the same way. The mean, not the low estimate: that one
    // drops to any single short call, and calls of two kinds mixed would start the
    // timing over and over, never letting a measurement end.
    const int64_t typ = typical_ns_.load(std::memory_order_relaxed);
    if (typ > 0 &&
        (timing_basis_ns_ == 0 || typ / 2 > timing_basis_ns_ || typ < timing_basis_ns_ / 2)) {
        rest_choice_.start_over();
        timing_basis_ns_ = typ;
    }
    // Another thread's wait may have moved the choice on since this one began.
    if (rest_choice_.next() != static_cast<size_t>(used)) return;
    // A call of another kind than those the estimate follows (a prompt's graph among a
    // token's, same command) is not compared with them in a measurement. Between
    // measurements it counts, capped at 4 times the estimate: a watch that cost the host a
    // time slice is what the choice's fall-back rules are there to see.
    int64_t ns = std::max<int64_t>(took.count(), 0);
    if (est > 0 && ns > 2 * est) {
        if (rest_choice_.measuring()) return;
        ns = std::min(ns, 4 * est);
    }
    const bool was_measuring = rest_choice_.measuring();
    rest_choice_.report(static_cast<uint64_t>(ns));
    if (!was_measuring && rest_choice_.measuring() && typ > 0) timing_basis_ns_ = typ;
}

ArrivalForecast::Rest ArrivalForecast::rest_chosen() const noexcept {
    const std::lock_guard lk(rest_mu_);
    return static_cast<Rest>(rest_choice_.chosen());
}

unsigned ArrivalForecast::rest_measurements() const noexcept {
    const std::lock_guard lk(rest_mu_);
    return rest_choice_.measurements();
}

unsigned ArrivalForecast::rest_fallbacks() const noexcept {
    const std::lock_guard lk(rest_mu_);
    return rest_choice_.fallbacks();
}

nanoseconds ArrivalForecast::estimate() const noexcept {
    return nanoseconds(estimate_ns_.load(std::memory_order_relaxed));
}
nanoseconds ArrivalForecast::sure_estimate() const noexcept {
    if (seen_.load(std::memory_order_relaxed) < sure_after) return nanoseconds::zero();
    return nanoseconds(estimate_ns_.load(std::memory_order_relaxed));
}
nanoseconds ArrivalForecast::typical() const noexcept {
    return nanoseconds(typical_ns_.load(std::memory_order_relaxed));
}
nanoseconds ArrivalForecast::spread() const noexcept {
    return nanoseconds(spread_ns_.load(std::memory_order_relaxed));
}

// --- the wait

Expected<uint32_t> wait_for_reply(std::span<std::byte> page, const WaitPolicy& policy,
                                  Deadline deadline, const WaitHooks& hooks) {
    if (page.size() < reply_header_size)
        return fail(Errc::invalid_argument, "reply page too small");
    const WaitClock& clock = policy.time();
    auto word = notification_word(page);
    auto done = [&]() -> bool { return word.load(std::memory_order_acquire) != 0; };
    auto host_gone = [&] {
        return hooks.host_alive && !hooks.host_alive->load(std::memory_order_acquire);
    };

    if (policy.kind == WaitPolicy::Kind::fixed_poll) {
        const auto start = clock.now();
        // ggml's strategy: sleep a fixed interval between looks.
        while (!done()) {
            const auto now = clock.now();
            if (deadline.expired(now)) return timed_out(clock, start);
            if (host_gone()) break;
            clock.sleep(clamped(policy.poll_interval, deadline, now));
        }
        if (done()) return word.load(std::memory_order_acquire) - 1;
        return fail(Errc::disconnected, "the host stopped before replying");
    }

    TimerSlack slack;
    // A wait its forecast rests for, where the host wakes sleepers, either blocks until
    // woken or rests and watches (phase 0), as the forecast's timing chose
    // (ArrivalForecast::rest_mode); it reports how long it took.
    ArrivalForecast* const forecast = policy.forecast;
    const detail::RestChoice choice =
        detail::choose_rest(forecast, hooks.sleepers != nullptr, clock);

    // Phase 0: a forecast sure of when the reply is due: rest until shortly before it
    // (blocked where the host wakes sleepers, so an early reply still wakes us; else
    // asleep in slices, so an early reply is noticed at the next one), then watch (spin)
    // through the time it is due.
    auto start = Clock::time_point::min();
    auto spin_began = start; // the wait's CPU-bound part began (after any rest)
    bool rested = false;
    if (choice.way == ArrivalForecast::Rest::block) {
        // Straight to phase 2's block: no spin, and the spin budget ignores this wait.
        rested = true;
        start = spin_began = choice.began;
    } else if (forecast) {
        nanoseconds slice{0}; // a sleep's longest: half the rest, at least max_sleep
        auto rest = [&](nanoseconds d) {
            slack.lower(); // the rest is timed to the microsecond
            if (hooks.sleepers) {
                hooks.sleepers->fetch_add(1, std::memory_order_seq_cst);
                if (word.load(std::memory_order_seq_cst) == 0) clock.block(word_ptr(page), 0, d);
                hooks.sleepers->fetch_sub(1, std::memory_order_seq_cst);
            } else {
                if (slice == nanoseconds::zero()) slice = std::max(policy.max_sleep, d / 2);
                clock.sleep(std::min(d, slice));
            }
        };
        const auto r =
            detail::rest_then_watch(*forecast, choice.plan, clock, deadline, hooks.host_cpu,
                                    hooks.yield_between_looks, done, rest, host_gone);
        if (r.timeout) return timed_out(clock, r.start);
        if (r.done) {
            choice.report(clock);
            return word.load(std::memory_order_acquire) - 1;
        }
        if (r.rested) {
            rested = true;
            start = r.start;
            spin_began = clock.now();
        }
    }

    // Phase 1: spin, as long as spinning has lately paid (hooks.budget), at most
    // spin_for. A fast host answers within a few hundred nanoseconds. (Not after a rest:
    // the watch was this wait's spin. Nor where the command's forecast is sure its reply
    // comes after the longest spin: that spin cannot win, and its loss would teach the
    // transport's budget, shared by every command, to stop spinning for the short ones.)
    detail::SpinPlan plan;
    const bool spin_cannot_win = !rested && detail::spin_cannot_win(forecast, policy.spin_for);
    if (spin_cannot_win) {
        start = spin_began = clock.now();
    } else if (!rested) {
        plan.budget = hooks.budget ? hooks.budget->next(policy.spin_for) : policy.spin_for;
        plan.peer_cpu = hooks.host_cpu;
        plan.yield_between_looks = hooks.yield_between_looks;
        plan.deadline = deadline;
        plan.clock = &clock;
        const auto spun = detail::spin(plan, done, host_gone);
        start = spun.start;
        if (spun.done) {
            // An answer within the first looks has no clock reading: the forecast learns
            // only from waits that read the clock.
            const bool timed = start != Clock::time_point::min();
            const auto took = timed ? clock.now() - start : nanoseconds::zero();
            if (hooks.budget) hooks.budget->won(took, policy.spin_for);
            if (forecast && timed) forecast->observe(took);
            choice.report(clock);
            return word.load(std::memory_order_acquire) - 1;
        }
        if (start == Clock::time_point::min()) start = clock.now();
        if (spun.timeout) return timed_out(clock, start);
        spin_began = start;
    }

    // Phase 2: block (futex), or poll a host that cannot wake us (DRM): each sleep a
    // share of the time waited so far, longer when the polls cost too much CPU.
    // (Only a polling wait reads the CPU time: a blocking one needs no budget.)
    detail::PollPlan poll{policy};
    if (!hooks.sleepers) {
        poll.spun = duration_cast<nanoseconds>(clock.now() - spin_began);
        poll.cpu_start = poll.last_cpu = clock.cpu_time();
    }
    bool slept = false;
    while (!done()) {
        auto now = clock.now();
        if (deadline.expired(now)) return timed_out(clock, start);
        if (host_gone()) {
            if (done()) break;
            return fail(Errc::disconnected, "the host stopped before replying");
        }
        slept = true;
        if (hooks.sleepers) {
            // Announce ourselves before the last look so the host's notify sees us
            // (seq_cst on both sides: either we see the word or it sees the sleeper).
            hooks.sleepers->fetch_add(1, std::memory_order_seq_cst);
            if (word.load(std::memory_order_seq_cst) == 0) {
                // Wake up now and then to check liveness and the deadline.
                clock.block(word_ptr(page), 0, clamped(milliseconds(50), deadline, now));
            }
            hooks.sleepers->fetch_sub(1, std::memory_order_seq_cst);
        } else {
            slack.lower();
            clock.sleep(clamped(poll.next(now - start, clock.cpu_time()), deadline, now));
        }
    }
    const auto took = clock.now() - start;
    if (hooks.budget && !rested && !spin_cannot_win && (slept || plan.budget > nanoseconds::zero()))
        hooks.budget->lost(took, policy.spin_for);
    if (forecast) forecast->observe(took);
    choice.report(clock);
    return word.load(std::memory_order_acquire) - 1;
}

void notify_reply(std::span<std::byte> page, uint32_t code,
                  std::atomic<uint32_t>* sleepers) noexcept {
    notification_word(page).store(code + 1, std::memory_order_seq_cst);
    if (sleepers && sleepers->load(std::memory_order_seq_cst) != 0)
        detail::futex_wake_all(word_ptr(page));
}

} // namespace apir
