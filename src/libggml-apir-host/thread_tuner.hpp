// The thread count of a graph the host runs again and again, chosen by timing it.
//
// threads_for_work (checks.hpp) gives a graph of small nodes one thread: on a machine
// whose CPUs are busy, every thread of ggml's CPU device waits at each node for the
// slowest, and a thread taken off its CPU makes that wait last a time slice (a token of a
// small language model: 1 ms alone, 35 ms on two threads beside a busy process). On
// quiet CPUs the same graph runs faster on every thread (0.6 ms on two against 0.9 ms on
// one). Which holds depends on what else runs on the host, so a graph that is run again
// (graph_cache.hpp) is timed at each candidate thread floor, and runs at the fastest
// until the next measurement.
//
// - The candidates are floors under the work-based choice: floor f runs each part of
//   the graph on max(its work-based count, f) threads. 1 is the work-based choice
//   itself; then 2, 4, ... and the most threads, those that change some part's count.
// - The least floor is the safe candidate of the choice (choice_tuner.hpp, which gives
//   every rule): more threads are chosen only when they were faster on every run, so one
//   slow run (a preemption, threads starting) keeps them out until the next measurement;
//   at a higher floor, 3 slow runs in a row measure again (at the least floor they do
//   not: a busier machine makes more threads slower still), and runs whose mean passes
//   the least floor's median, or that cost over 8 of its medians and 10 ms beyond it (a
//   thread that waited for a busy CPU), go back to it. That can cost more than those
//   runs did when they are rare: 13-15 % in a simulation with one run in 300 at 35 ms
//   (0.6 ms otherwise, 0.9 ms on the least floor).
// - A measurement's first run at the least floor is not timed (the graph's first makes
//   the device's work buffer), nor are the first two at a higher floor: they start or
//   wake its threads. A thread woken while the other CPUs look busy may be put on the
//   CPU of the thread that woke it, and ggml-cpu's barriers then spin for milliseconds
//   each until the scheduler moves it: 3-13 ms, in the first run or the second, in
//   about half the measurements on a 2-vCPU virtual machine (traced with `perf sched`).
//   Two such runs that each take over 8 times the least floor's median and 10 ms, or
//   one over twice that, drop their floor at once.
// - Such a run, or another process's thread woken on a compute thread's CPU, can also
//   come later: a verdict for the least floor that rests on one run no longer than
//   twice that margin is measured again after 20 ms, once (choice_tuner.hpp).
//
// Pure logic: the caller times each run and reports it; nothing here reads a clock.
#pragma once

#include <apir/choice_tuner.hpp>

#include <cstddef>
#include <cstdint>
#include <vector>

namespace apir::ggml_host {

class ThreadTuner {
public:
    /// Floors beyond this many are not tried (2 + log2 of the most CPUs a process has).
    static constexpr size_t max_floors = 24;
    using Choice = ChoiceTuner<max_floors>;
    static constexpr size_t samples_per_candidate = Choice::samples_per_candidate;
    static constexpr uint64_t first_budget_ns = Choice::first_budget_ns;
    static constexpr uint64_t max_budget_ns = Choice::max_budget_ns;
    /// Untimed runs at a higher floor in a measurement (see above).
    static constexpr unsigned switch_runs = 2;

    /// The floors worth trying for a graph whose parts' work-based counts are at least
    /// `least` (threads_for_work), on up to `max_threads`: 1, then each of 2, 4, 8, ...
    /// and max_threads above `least`.
    [[nodiscard]] static std::vector<int> floors_for(int least, int max_threads) {
        std::vector<int> floors{1};
        for (int f = 2; f < max_threads; f *= 2)
            if (f > least) floors.push_back(f);
        if (max_threads > least && max_threads > 1) floors.push_back(max_threads);
        return floors;
    }

    ThreadTuner() = default;
    explicit ThreadTuner(std::vector<int> floors) { reset(std::move(floors)); }

    /// Starts over with these candidate floors (the first is used until measured).
    void reset(std::vector<int> floors) {
        floors_ = floors.empty() ? std::vector<int>{1} : std::move(floors);
        if (floors_.size() > max_floors) floors_.resize(max_floors);
        choice_.set_switch_runs(switch_runs);
        choice_.reset(floors_.size());
    }

    /// Whether there is more than one candidate (else next() is always 1).
    [[nodiscard]] bool tuning() const noexcept { return choice_.tuning(); }
    /// The floor for the next run.
    [[nodiscard]] int next() const noexcept { return floors_[choice_.next()]; }
    /// Reports the duration of the run made at next()'s floor.
    void report(uint64_t ns) { choice_.report(ns); }
    [[nodiscard]] bool measuring() const noexcept { return choice_.measuring(); }
    /// The floor chosen by the last measurement (the first candidate before one).
    [[nodiscard]] int chosen() const noexcept { return floors_[choice_.chosen()]; }
    /// Measurements completed.
    [[nodiscard]] unsigned measurements() const noexcept { return choice_.measurements(); }
    /// Returns to the least floor without a measurement.
    [[nodiscard]] unsigned fallbacks() const noexcept { return choice_.fallbacks(); }
    /// Compute time the current choice holds for before the next measurement.
    [[nodiscard]] uint64_t budget_ns() const noexcept { return choice_.budget_ns(); }

private:
    std::vector<int> floors_{1};
    Choice choice_;
};

} // namespace apir::ggml_host
