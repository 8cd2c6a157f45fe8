// A choice among a few ways of doing something that recurs, made by timing the runs made
// each way: the host's thread floor of a graph it runs again (libggml-apir-host's
// ThreadTuner), a guest's way of waiting for a long reply (ArrivalForecast, wait.hpp).
//
// Candidate 0 is the safe one and the measure of the others: a higher candidate is chosen
// only when it was faster on every run. A slow run has one of two causes, which one run
// cannot tell apart: a one-off (another process's thread woken on the run's CPU, a thread
// the scheduler put beside another for a few ms until it moved it), or a busy machine,
// which makes such runs again and again, each a time slice or more. A one-off costs up
// to twice the far-slower margin below (20 ms at least); a run beyond that is taken for a
// busy CPU. The rules:
// - A measurement runs each candidate 3 times in a row after an untimed run (which may
//   pay for the switch from another candidate: a thread woken, a buffer made),
//   candidate 0 first. Alternating would make every run pay for a switch. A caller whose
//   switch can take longer than one run gives the higher candidates more untimed runs
//   (set_switch_runs(): the host's thread floors take two, because a woken thread can
//   wait milliseconds for a CPU of its own, and the wait spills into the next run).
//   It keeps candidate 0, or the higher candidate of the lowest median among those whose
//   every run beat candidate 0's median: where runs scatter widely (a busy machine), a
//   lucky median must not choose the riskier way. So one slow run keeps a higher
//   candidate out until the next measurement.
// - A higher candidate whose first two timed runs both take over twice candidate 0's
//   median is dropped then (it could not win). One whose untimed runs each take over the
//   far-slower margin (8 times candidate 0's median, and over 10 ms), or one of them
//   over twice that, is dropped at once: a switch may cost that much once, a thread
//   waiting a time slice or more for a busy CPU does each time, and each such run costs
//   as much as many runs of the others. So on a busy machine a slow candidate costs one
//   run where its runs take over twice the margin, and its untimed runs where they take
//   less. Candidate 0 always takes its three.
// - The choice then holds for a budget of run time: 20 ms after a measurement that
//   changed the choice, twice the last budget after one that confirmed it, and at least
//   50 times what the other candidates' runs cost beyond the choice's median (so that
//   measuring costs about 2 %; what the last measurements cost counts too, each weighing
//   half the one after it); never more than 5 s.
// - At a higher candidate:
//   - 3 runs in a row at over twice the choice's median (the machine got busy) start a
//     measurement at once, its budget counted from 20 ms again. At candidate 0 they do
//     not: it is the safe way.
//   - Runs whose mean since the choice passes candidate 0's median (a few runs of a time
//     slice or more among fast ones, which a median of three does not see) go back to
//     candidate 0 at once, for 50 times what they cost beyond it (at least 20 ms, at most
//     5 s). The mean is taken after 32 runs; before that, runs that cost the far-slower
//     margin beyond it (a wait for a CPU) go back at once.
// - A verdict for candidate 0 that rests on a one-off holds only for 20 ms, once: a
//   measurement where a higher candidate whose median beat candidate 0's lost by one run
//   (one that did not beat that median, by however little), no longer than a one-off; or
//   a go-back before the mean counts that cost no more than one. A second such verdict
//   holds as any other, until a higher choice has held for its budget and 32 runs (or
//   the caller resets or starts over). Without this, one run slowed by another process
//   while the choice was being made keeps the faster way out for 50 times its cost (on a
//   2-vCPU virtual machine, 2 or 3 llama-bench runs in 12 kept one host thread
//   throughout).
// - The caller may start over (start_over()) where what the runs do has changed (calls
//   of another kind): samples of before and after must not be compared, nor a choice
//   made on the old ones kept. Candidate 0 then runs for 20 ms before the next
//   measurement, so that a change that settles over a few runs (a peer timing its own
//   choice on the new kind of run) is not what is measured.
//
// Pure logic: the caller times each run and reports it; nothing here reads a clock. Not
// thread-safe: a caller shared by threads locks around it.
#pragma once

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>

namespace apir {

template <size_t MaxCandidates>
class ChoiceTuner {
    static_assert(MaxCandidates >= 1);

public:
    static constexpr size_t samples_per_candidate = 3;
    static constexpr uint64_t first_budget_ns = 20'000'000;  // 20 ms
    static constexpr uint64_t max_budget_ns = 5'000'000'000; // 5 s
    static constexpr unsigned slow_runs_to_measure = 3;
    static constexpr uint64_t waste_factor = 50;
    static constexpr uint64_t min_runs_for_mean = 32;
    static constexpr uint64_t far_slower_factor = 8;
    static constexpr uint64_t far_slower_at_least_ns = 10'000'000; // 10 ms

    ChoiceTuner() = default;
    explicit ChoiceTuner(size_t candidates) { reset(candidates); }

    static constexpr unsigned max_switch_runs = 3;
    /// The untimed runs a higher candidate takes in a measurement before its timed ones
    /// (1 to max_switch_runs; 1 unless set). Kept by reset().
    void set_switch_runs(unsigned runs) noexcept {
        switch_runs_ = std::clamp(runs, 1u, max_switch_runs);
    }

    /// Starts over with this many candidates (at least 1, at most MaxCandidates); the
    /// first is used until measured.
    void reset(size_t candidates) {
        n_ = std::clamp<size_t>(candidates, 1, MaxCandidates);
        samples_ = {};
        counts_ = {};
        dropped_ = {};
        warm_ = {};
        forget_choice();
        measurements_ = 0;
        fallbacks_ = 0;
        measuring_ = false;
        if (n_ > 1) start_measuring();
    }

    /// Whether there is more than one candidate (else next() is always 0).
    [[nodiscard]] bool tuning() const noexcept { return n_ > 1; }

    /// The candidate for the next run.
    [[nodiscard]] size_t next() const noexcept { return measuring_ ? current_ : chosen_; }

    /// Reports the duration of the run made with next()'s candidate (at least 1 ns is
    /// counted, so that runs always spend the budget).
    void report(uint64_t ns) {
        if (!tuning()) return;
        ns = std::max<uint64_t>(ns, 1);
        if (measuring_) {
            record(ns);
            return;
        }
        spent_ = add(spent_, ns);
        ++runs_;
        if (chosen_ > 0) {
            slow_runs_ = ns > mul(2, median_of(chosen_)) ? slow_runs_ + 1 : 0;
            if (slow_runs_ >= slow_runs_to_measure) {
                budget_ = first_budget_ns;
                start_measuring();
                return;
            }
            // median_of(0): candidate 0's in the last measurement (its samples stay until
            // the next one starts).
            const uint64_t at_safe = mul(runs_, median_of(0));
            if ((runs_ >= min_runs_for_mean && spent_ > at_safe) ||
                spent_ > add(at_safe, far_slower_margin())) {
                fall_back(spent_ - at_safe);
                return;
            }
        }
        if (spent_ >= budget_) {
            // A higher choice that held for its budget, and long enough for its mean to
            // count: a one-off against it may again be measured soon.
            if (chosen_ > 0 && runs_ >= min_runs_for_mean) retried_ = false;
            start_measuring();
        }
    }

    /// The runs no longer do what the samples timed: drops the choice (back to candidate
    /// 0, not counted as a fall-back) and what the last measurements cost, and measures
    /// again after 20 ms of runs; that measurement's choice holds as a first one would.
    void start_over() {
        if (!tuning()) return;
        measuring_ = false;
        forget_choice();
    }

    [[nodiscard]] bool measuring() const noexcept { return measuring_; }
    /// The candidate chosen by the last measurement (0 before one).
    [[nodiscard]] size_t chosen() const noexcept { return chosen_; }
    /// Measurements completed.
    [[nodiscard]] unsigned measurements() const noexcept { return measurements_; }
    /// Returns to candidate 0 without a measurement (fall_back).
    [[nodiscard]] unsigned fallbacks() const noexcept { return fallbacks_; }
    /// Run time the current choice holds for before the next measurement.
    [[nodiscard]] uint64_t budget_ns() const noexcept { return budget_; }

private:
    /// Candidate 0, held for a first budget, as before any measurement.
    void forget_choice() {
        chosen_ = 0;
        has_choice_ = false;
        budget_ = first_budget_ns;
        spent_ = 0;
        runs_ = 0;
        usual_waste_ = 0;
        slow_runs_ = 0;
        retried_ = false;
    }

    void start_measuring() {
        measuring_ = true;
        counts_ = {};
        dropped_ = {};
        warm_ = {};
        untimed_min_.fill(UINT64_MAX);
        // Candidate 0 first: its median is what the others' runs are dropped against.
        current_ = 0;
    }

    void record(uint64_t ns) {
        const size_t c = current_;
        const unsigned untimed = c == 0 ? 1 : switch_runs_;
        if (warm_[c] < untimed) {
            // Its first runs in this measurement are not timed (they may pay for the
            // switch from another candidate: a thread woken, a work buffer made); then it
            // runs on, unless they took so long that no switch explains it (each over the
            // far-slower margin, or one beyond a one-off: a thread that waited a time
            // slice for a busy CPU): then the candidate is dropped at once, and the run
            // counts as its sample, so that what it cost holds the choice. (Candidate 0
            // runs first and takes all its runs: a higher candidate always has its
            // median to go by.)
            ++warm_[c];
            if (c == 0) return;
            untimed_min_[c] = std::min(untimed_min_[c], ns);
            const bool each_far_slower =
                warm_[c] == untimed && untimed_min_[c] > far_slower_margin();
            if (!each_far_slower && ns <= one_off_limit()) return;
            dropped_[c] = true;
        }
        samples_[c][counts_[c]++] = ns;
        // Two runs both over twice candidate 0's median: this one could not be chosen
        // (one run can be slow for reasons of its own, two are enough). Candidate 0 is
        // the measure of the others and takes all its runs.
        if (c > 0 && counts_[c] >= 2 && min_of(c) > mul(2, median_of(0))) dropped_[c] = true;
        // Its runs in a row, then the next candidate with samples to take.
        if (!dropped_[c] && counts_[c] < samples_per_candidate) return;
        for (size_t step = 1; step <= n_; ++step) {
            const size_t i = (c + step) % n_;
            if (!dropped_[i] && counts_[i] < samples_per_candidate) {
                current_ = i;
                return;
            }
        }
        finish_measuring();
    }

    void finish_measuring() {
        // Candidate 0, or a higher one whose every run beat candidate 0's median; of
        // those, the lowest median.
        size_t best = 0;
        uint64_t best_median = median_of(0);
        bool lost_by_one_off = false; // a higher candidate kept out by one run, a one-off
        for (size_t i = 1; i < n_; ++i) {
            if (dropped_[i] || counts_[i] < samples_per_candidate) continue;
            const unsigned slower = runs_not_faster(i);
            lost_by_one_off |=
                slower == 1 && median_of(i) < median_of(0) && max_of(i) <= one_off_limit();
            if (slower > 0) continue;
            const uint64_t m = median_of(i);
            if (m < best_median) best = i, best_median = m;
        }
        // What the other candidates' runs cost beyond the best's median: the choice holds
        // for at least waste_factor times that.
        uint64_t waste = 0;
        for (size_t i = 0; i < n_; ++i) {
            if (i == best) continue;
            for (size_t k = 0; k < counts_[i]; ++k)
                if (samples_[i][k] > best_median) waste = add(waste, samples_[i][k] - best_median);
        }
        // A measurement's waste varies (a run of a time slice or more now and then): the
        // mean of the last ones, halving, counts too.
        usual_waste_ = usual_waste_ / 2 + waste / 2;
        waste = std::max(waste, usual_waste_);
        // One run among fast ones kept a higher candidate out, and it was no longer than
        // one-offs take: measure again soon, once.
        hold(waste,
             best == chosen_ && has_choice_ ? std::min(2 * budget_, max_budget_ns)
                                            : first_budget_ns,
             best == 0 && lost_by_one_off);
        chosen_ = best;
        has_choice_ = true;
        measuring_ = false;
        spent_ = 0;
        runs_ = 0;
        slow_runs_ = 0;
        ++measurements_;
    }

    /// Back to candidate 0 without measuring: the choice's runs cost `waste` more than
    /// candidate 0 would have.
    void fall_back(uint64_t waste) {
        chosen_ = 0;
        // Before the mean counts, on what a one-off costs: measure again soon, once.
        hold(waste, first_budget_ns, runs_ < min_runs_for_mean && waste <= one_off_limit());
        spent_ = 0;
        runs_ = 0;
        slow_runs_ = 0;
        ++fallbacks_;
    }

    // Saturating: durations come from a caller's clock, and may be anything.
    [[nodiscard]] static uint64_t add(uint64_t a, uint64_t b) noexcept {
        return a > UINT64_MAX - b ? UINT64_MAX : a + b;
    }
    [[nodiscard]] static uint64_t mul(uint64_t a, uint64_t b) noexcept {
        return b != 0 && a > UINT64_MAX / b ? UINT64_MAX : a * b;
    }

    /// Sets the budget a verdict holds for: hold_for(waste, at_least), or, for a verdict
    /// for candidate 0 that rests on a one-off, the first budget, once (retried_).
    void hold(uint64_t waste, uint64_t at_least, bool on_one_off) {
        if (on_one_off && !retried_) {
            budget_ = first_budget_ns;
            retried_ = true;
        } else {
            budget_ = hold_for(waste, at_least);
        }
    }

    /// A budget of waste_factor times `waste`, at least `at_least`, at most max_budget_ns.
    [[nodiscard]] static uint64_t hold_for(uint64_t waste, uint64_t at_least) noexcept {
        if (waste > max_budget_ns / waste_factor) return max_budget_ns;
        return std::max(at_least, waste * waste_factor);
    }

    /// How many of a candidate's samples did not beat candidate 0's median.
    [[nodiscard]] unsigned runs_not_faster(size_t i) const noexcept {
        const uint64_t safe = median_of(0);
        return static_cast<unsigned>(std::count_if(samples_[i].begin(),
                                                   samples_[i].begin() + counts_[i],
                                                   [&](uint64_t ns) { return ns >= safe; }));
    }
    [[nodiscard]] uint64_t max_of(size_t i) const noexcept {
        return *std::max_element(samples_[i].begin(), samples_[i].begin() + counts_[i]);
    }
    [[nodiscard]] uint64_t min_of(size_t i) const noexcept {
        return *std::min_element(samples_[i].begin(), samples_[i].begin() + counts_[i]);
    }

    /// Beyond this, a run is not what a switch or the run's own work costs, but a wait
    /// for a CPU (a time slice or more): 8 of candidate 0's medians, at least 10 ms.
    [[nodiscard]] uint64_t far_slower_margin() const noexcept {
        return std::max(mul(far_slower_factor, median_of(0)), far_slower_at_least_ns);
    }
    /// What one slow run costs when its cause passes (a thread that shared a CPU with
    /// another for a few ms until the scheduler moved it), at most: twice the far-slower
    /// margin. Longer runs are a busy CPU's time slices.
    [[nodiscard]] uint64_t one_off_limit() const noexcept { return mul(2, far_slower_margin()); }

    /// The median of a candidate's samples of the current measurement (or the last one).
    [[nodiscard]] uint64_t median_of(size_t i) const noexcept {
        const size_t n = counts_[i];
        if (n == 0) return UINT64_MAX;
        std::array<uint64_t, samples_per_candidate> v{};
        std::copy_n(samples_[i].begin(), n, v.begin());
        std::sort(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(n));
        return v[n / 2];
    }

    size_t n_ = 1;
    std::array<std::array<uint64_t, samples_per_candidate>, MaxCandidates> samples_{};
    std::array<uint8_t, MaxCandidates> counts_{};
    std::array<bool, MaxCandidates> dropped_{};
    std::array<uint8_t, MaxCandidates> warm_{};         ///< per candidate: untimed runs taken
    std::array<uint64_t, MaxCandidates> untimed_min_{}; ///< the shortest of them
    unsigned switch_runs_ = 1;
    size_t chosen_ = 0;
    bool has_choice_ = false; ///< a measurement chose since the start (or start_over())
    size_t current_ = 0;
    bool measuring_ = false;
    uint64_t budget_ = first_budget_ns;
    uint64_t spent_ = 0;
    uint64_t runs_ = 0;        ///< with the choice since it was made
    uint64_t usual_waste_ = 0; ///< of the measurements, each weighing half the last
    /// A verdict for candidate 0 on a one-off was measured again soon; cleared when a
    /// higher choice holds for its budget and min_runs_for_mean runs.
    bool retried_ = false;
    unsigned slow_runs_ = 0;
    unsigned measurements_ = 0;
    unsigned fallbacks_ = 0;
};

} // namespace apir
