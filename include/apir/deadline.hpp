// Deadlines: the point in time after which a wait gives up (Deadline), on the steady
// clock or any clock with now(). Every wait in apir takes one.
#pragma once

#include <chrono>

namespace apir {

using Clock = std::chrono::steady_clock;

/// A point in time after which a wait gives up; Deadline::never() waits forever.
class Deadline {
public:
    constexpr Deadline() = default;
    static constexpr Deadline never() noexcept { return Deadline{}; }
    static Deadline at(Clock::time_point t) noexcept { return Deadline{t}; }
    /// A duration past the clock's range (e.g. nanoseconds::max()) means no deadline.
    template <class Rep, class Period>
    static Deadline after(std::chrono::duration<Rep, Period> d) noexcept {
        return after_from(Clock::now(), d);
    }
    /// The same on another clock (anything with now(), e.g. a WaitClock).
    template <class Rep, class Period, class C>
    static Deadline after(std::chrono::duration<Rep, Period> d, const C& clock) noexcept {
        return after_from(clock.now(), d);
    }
    [[nodiscard]] bool is_never() const noexcept { return at_ == Clock::time_point::max(); }
    [[nodiscard]] bool expired(Clock::time_point now = Clock::now()) const noexcept {
        return !is_never() && now >= at_;
    }
    [[nodiscard]] Clock::time_point time() const noexcept { return at_; }
    /// The sooner of two deadlines (never() is the latest of all).
    [[nodiscard]] static Deadline sooner(Deadline a, Deadline b) noexcept {
        return a.at_ < b.at_ ? a : b;
    }

private:
    template <class Rep, class Period>
    static Deadline after_from(Clock::time_point now,
                               std::chrono::duration<Rep, Period> d) noexcept {
        // Summed in floating point first: the cast and the sum must not overflow.
        using Secs = std::chrono::duration<double>;
        const Secs total = Secs(now.time_since_epoch()) + Secs(d);
        if (total >= Secs(Clock::duration::max())) return never();
        if (total <= Secs(Clock::duration::min())) return Deadline{Clock::time_point::min()};
        return Deadline{now + std::chrono::duration_cast<Clock::duration>(d)};
    }
    constexpr explicit Deadline(Clock::time_point t) : at_(t) {}
    Clock::time_point at_ = Clock::time_point::max();
};

} // namespace apir
