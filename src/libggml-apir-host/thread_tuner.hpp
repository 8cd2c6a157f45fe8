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
// - A measurement runs the candidates in turn, 3 runs each, the current choice first.
//   It keeps the least floor, or the higher floor of the lowest median among those
//   whose every run beat the least floor's median: on a busy machine the runs on more
//   threads scatter widely, and a lucky median must not choose them. So one slow run (a
//   preemption, threads starting) keeps a higher floor out until the next measurement.
// - A higher floor whose first two runs both take over twice the least floor's median is
//   dropped then (it could not win): a slow candidate costs two runs. The least floor
//   is the measure of the others and always takes its three.
// - The choice then holds for a budget of compute time: 20 ms after a measurement that
//   changed the choice, twice the last budget after one that confirmed it, and at least
//   50 times what the other candidates' runs cost beyond the choice's median (so that
//   measuring costs about 2 %; what the last measurements cost counts too, each weighing
//   half the one after it); never more than 5 s.
// - At a floor above the least:
//   - 3 runs in a row at over twice the choice's median (the machine got busy) start a
//     measurement at once, its budget counted from 20 ms again. At the least floor they
//     do not: a busier machine makes more threads slower still.
//   - Runs whose mean since the choice passes the least floor's median (a few runs of a
//     time slice or more among fast ones, which a median of three does not see) go back
//     to the least floor at once, for 50 times what they cost beyond it (at least 20 ms,
//     at most 5 s). When such runs are rare this can cost more than they did: about
//     10 % in a simulation with one run in 300 at 35 ms (0.6 ms otherwise, 0.9 ms on
//     the least floor).
// - The first run at each floor is not timed: the graph's first makes the device's work
//   buffer, a higher floor's may start its threads (and one slow run keeps a floor out).
//
// Pure logic: the caller times each run and reports it; nothing here reads a clock.
#pragma once

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace apir::ggml_host {

class ThreadTuner {
public:
    static constexpr size_t samples_per_candidate = 3;
    static constexpr uint64_t first_budget_ns = 20'000'000;  // 20 ms
    static constexpr uint64_t max_budget_ns = 5'000'000'000; // 5 s
    static constexpr unsigned slow_runs_to_measure = 3;
    static constexpr uint64_t waste_factor = 50;
    static constexpr uint64_t min_runs_for_mean = 32;

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
        samples_.assign(floors_.size(), {});
        counts_.assign(floors_.size(), 0);
        dropped_.assign(floors_.size(), false);
        warm_.assign(floors_.size(), false);
        chosen_ = 0;
        budget_ = first_budget_ns;
        spent_ = 0;
        runs_ = 0;
        usual_waste_ = 0;
        slow_runs_ = 0;
        measurements_ = 0;
        fallbacks_ = 0;
        measuring_ = false;
        if (floors_.size() > 1) start_measuring();
    }

    /// Whether there is more than one candidate (else next() is always 1).
    [[nodiscard]] bool tuning() const noexcept { return floors_.size() > 1; }

    /// The floor for the next run.
    [[nodiscard]] int next() const noexcept { return floors_[measuring_ ? current_ : chosen_]; }

    /// Reports the duration of the run made at next()'s floor.
    void report(uint64_t ns) {
        if (!tuning()) return;
        if (measuring_) {
            record(ns);
            return;
        }
        spent_ += ns;
        ++runs_;
        if (chosen_ > 0) {
            // Above the least floor (at the least, a busier machine makes more threads
            // slower still): three slow runs in a row measure again at once, and runs
            // whose mean has passed what the least floor took go back to it.
            slow_runs_ = ns > 2 * median_of(chosen_) ? slow_runs_ + 1 : 0;
            if (slow_runs_ >= slow_runs_to_measure) {
                budget_ = first_budget_ns;
                start_measuring();
                return;
            }
            // median_of(0): the least floor's in the last measurement (its samples stay
            // until the next one starts).
            const uint64_t at_least = runs_ * median_of(0);
            if (runs_ >= min_runs_for_mean && spent_ > at_least) {
                fall_back(spent_ - at_least);
                return;
            }
        }
        if (spent_ >= budget_) start_measuring();
    }

    [[nodiscard]] bool measuring() const noexcept { return measuring_; }
    /// The floor chosen by the last measurement (the first candidate before one).
    [[nodiscard]] int chosen() const noexcept { return floors_[chosen_]; }
    /// Measurements completed.
    [[nodiscard]] unsigned measurements() const noexcept { return measurements_; }
    /// Returns to the least floor without a measurement (fall_back).
    [[nodiscard]] unsigned fallbacks() const noexcept { return fallbacks_; }
    /// Compute time the current choice holds for before the next measurement.
    [[nodiscard]] uint64_t budget_ns() const noexcept { return budget_; }

private:
    void start_measuring() {
        measuring_ = true;
        std::fill(counts_.begin(), counts_.end(), size_t{0});
        std::fill(dropped_.begin(), dropped_.end(), false);
        // The current choice first: its runs are the ones most likely to be fast.
        current_ = chosen_;
    }

    void record(uint64_t ns) {
        const size_t c = current_;
        if (!warm_[c]) {
            // Its first run: the graph's makes the device's work buffer, a higher floor's
            // may start the threads. Not timed; the candidate runs again.
            warm_[c] = true;
            return;
        }
        samples_[c][counts_[c]++] = ns;
        // A higher floor is dropped once two of its runs are both over twice the least
        // floor's median: it could not be chosen (one run can be slow for reasons of
        // its own, two are enough). The least floor is the measure of the others and
        // takes all its runs.
        if (c > 0 && counts_[c] >= 2 && counts_[0] > 0 && min_of(c) > 2 * median_of(0))
            dropped_[c] = true;
        // The next candidate with samples to take, in turn after this one.
        for (size_t step = 1; step <= floors_.size(); ++step) {
            const size_t i = (c + step) % floors_.size();
            if (!dropped_[i] && counts_[i] < samples_per_candidate) {
                current_ = i;
                return;
            }
        }
        finish_measuring();
    }

    void finish_measuring() {
        // The least floor, or a higher one whose every run beat the least floor's median
        // (more threads are the riskier choice: on a busy machine their runs scatter, and
        // a lucky median must not pick them); of those, the lowest median.
        size_t best = 0;
        uint64_t best_median = median_of(0);
        for (size_t i = 1; i < floors_.size(); ++i) {
            if (dropped_[i] || counts_[i] < samples_per_candidate || max_of(i) >= median_of(0))
                continue;
            const uint64_t m = median_of(i);
            if (m < best_median) best = i, best_median = m;
        }
        // What the other candidates' runs cost beyond the best's median: the choice holds
        // for at least waste_factor times that, so measuring costs at most about 1/50th.
        uint64_t waste = 0;
        for (size_t i = 0; i < floors_.size(); ++i) {
            if (i == best) continue;
            for (size_t k = 0; k < counts_[i]; ++k)
                if (samples_[i][k] > best_median) waste += samples_[i][k] - best_median;
        }
        // A measurement's waste varies (a run of a time slice or more now and then): the
        // mean of the last ones, halving, counts too.
        usual_waste_ = usual_waste_ / 2 + waste / 2;
        waste = std::max(waste, usual_waste_);
        budget_ = hold_for(waste, best == chosen_ && measurements_ > 0
                                      ? std::min(2 * budget_, max_budget_ns)
                                      : first_budget_ns);
        chosen_ = best;
        measuring_ = false;
        spent_ = 0;
        runs_ = 0;
        slow_runs_ = 0;
        ++measurements_;
    }

    /// Back to the least floor without measuring: the choice's runs cost `waste` more
    /// than the least floor would have (a few runs that took a time slice or more each,
    /// among fast ones: a median of three does not see them).
    void fall_back(uint64_t waste) {
        chosen_ = 0;
        budget_ = hold_for(waste, first_budget_ns);
        spent_ = 0;
        runs_ = 0;
        slow_runs_ = 0;
        ++fallbacks_;
    }

    /// A budget of waste_factor times `waste`, at least `at_least`, at most max_budget_ns.
    [[nodiscard]] static uint64_t hold_for(uint64_t waste, uint64_t at_least) noexcept {
        if (waste > max_budget_ns / waste_factor) return max_budget_ns;
        return std::max(at_least, waste * waste_factor);
    }

    [[nodiscard]] uint64_t max_of(size_t i) const noexcept {
        return *std::max_element(samples_[i].begin(), samples_[i].begin() + counts_[i]);
    }
    [[nodiscard]] uint64_t min_of(size_t i) const noexcept {
        return *std::min_element(samples_[i].begin(), samples_[i].begin() + counts_[i]);
    }

    /// The median of a candidate's samples of the current measurement (or the last one).
    [[nodiscard]] uint64_t median_of(size_t i) const noexcept {
        const size_t n = counts_[i];
        if (n == 0) return UINT64_MAX;
        std::array<uint64_t, samples_per_candidate> v{};
        std::copy_n(samples_[i].begin(), n, v.begin());
        std::sort(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(n));
        return v[n / 2];
    }

    std::vector<int> floors_{1};
    std::vector<std::array<uint64_t, samples_per_candidate>> samples_{1};
    std::vector<size_t> counts_{0};
    std::vector<bool> dropped_{false};
    std::vector<bool> warm_{false}; ///< per candidate: has run once (that run is not timed)
    size_t chosen_ = 0;
    size_t current_ = 0;
    bool measuring_ = false;
    uint64_t budget_ = first_budget_ns;
    uint64_t spent_ = 0;
    uint64_t runs_ = 0;        ///< at the choice since it was made
    uint64_t usual_waste_ = 0; ///< of the measurements, each weighing half the last
    unsigned slow_runs_ = 0;
    unsigned measurements_ = 0;
    unsigned fallbacks_ = 0;
};

} // namespace apir::ggml_host
