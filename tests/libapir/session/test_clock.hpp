// A WaitClock for deadline tests: its time moves only when the waiter looks at it (one
// tick per look) or sleeps (by the whole sleep), never by itself. A wait against a
// deadline on it ends exactly at the deadline. Each sleep or block takes at most
// `real` of real time (0: none), so that a real host can still answer meanwhile.
#pragma once

#include <apir/transport.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <thread>

namespace apir_test {

class TestClock final : public apir::WaitClock {
public:
    explicit TestClock(std::chrono::nanoseconds real = std::chrono::nanoseconds::zero(),
                       std::chrono::nanoseconds tick = std::chrono::microseconds(1))
        : real_(real), tick_(tick.count()) {}
    /// Until arm(), the clock is the real one: set-up calls (a handshake, LOADLIBRARY)
    /// then wait for a host thread as long as it needs, whatever the machine's load.
    void disarm() noexcept { armed_.store(false); }
    /// From now on, test time: it goes on from the real time of this moment.
    void arm() noexcept {
        t_.store((apir::Clock::now() - base()).count());
        armed_.store(true);
    }
    apir::Clock::time_point now() const noexcept override {
        if (!armed_.load()) return apir::Clock::now();
        return at(t_.fetch_add(tick_) + tick_);
    }
    void sleep(std::chrono::nanoseconds d) const noexcept override {
        if (!armed_.load()) return std::this_thread::sleep_for(d);
        if (real_ > std::chrono::nanoseconds::zero())
            std::this_thread::sleep_for(std::min(d, real_));
        slept_.fetch_add(d.count());
        t_.fetch_add(d.count());
        sleeps_.fetch_add(1);
    }
    void block(const uint32_t* word, uint32_t expected,
               std::chrono::nanoseconds d) const noexcept override {
        // The whole block passes unless the word changed (after `real` at most).
        auto w = std::atomic_ref<uint32_t>(*const_cast<uint32_t*>(word));
        if (!armed_.load()) {
            const auto until = apir::Clock::now() + d;
            while (w.load() == expected && apir::Clock::now() < until)
                std::this_thread::sleep_for(std::chrono::microseconds(20));
            return;
        }
        for (auto left = real_; left > std::chrono::nanoseconds::zero() && w.load() == expected;
             left -= std::chrono::microseconds(20))
            std::this_thread::sleep_for(std::chrono::microseconds(20));
        if (w.load() == expected) {
            slept_.fetch_add(d.count());
            t_.fetch_add(d.count());
            sleeps_.fetch_add(1);
        }
    }
    /// The clock's time without moving it.
    [[nodiscard]] apir::Clock::time_point peek() const noexcept { return at(t_.load()); }
    /// Everything slept so far, and how many sleeps.
    [[nodiscard]] std::chrono::nanoseconds slept() const noexcept {
        return std::chrono::nanoseconds(slept_.load());
    }
    [[nodiscard]] uint64_t sleeps() const noexcept { return sleeps_.load(); }

private:
    // Starts at the real time, so that deadlines made from either clock compare.
    static apir::Clock::time_point at(int64_t ns) { return base() + std::chrono::nanoseconds(ns); }
    static apir::Clock::time_point base() {
        static const auto b = apir::Clock::now();
        return b;
    }
    std::chrono::nanoseconds real_;
    int64_t tick_;
    std::atomic<bool> armed_{true};
    mutable std::atomic<int64_t> t_{0};
    mutable std::atomic<int64_t> slept_{0};
    mutable std::atomic<uint64_t> sleeps_{0};
};

} // namespace apir_test
