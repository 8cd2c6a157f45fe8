// libggml-apir-host's choice of device threads per graph: the work it counts per node and
// the thread count it derives (checks.hpp), and the floor it times (thread_tuner.hpp). No device.
#include "catch.hpp"

#include "checks.hpp"
#include "thread_tuner.hpp"

#include <ggml.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <vector>

using namespace apir::ggml_host;

namespace {
ggml_tensor tensor(ggml_op op, int64_t ne0, int64_t ne1 = 1, int64_t ne2 = 1, int64_t ne3 = 1) {
    ggml_tensor t{};
    t.type = GGML_TYPE_F32;
    t.op = op;
    t.ne[0] = ne0, t.ne[1] = ne1, t.ne[2] = ne2, t.ne[3] = ne3;
    return t;
}
} // namespace

TEST_CASE("host threads: ops that the device only reinterprets do not compute") {
    for (ggml_op op :
         {GGML_OP_NONE, GGML_OP_VIEW, GGML_OP_RESHAPE, GGML_OP_PERMUTE, GGML_OP_TRANSPOSE})
        CHECK_FALSE(op_computes(op));
    for (ggml_op op : {GGML_OP_ADD, GGML_OP_MUL_MAT, GGML_OP_CPY, GGML_OP_GET_ROWS,
                       GGML_OP_SOFT_MAX, GGML_OP_CONT})
        CHECK(op_computes(op));
}

TEST_CASE("host threads: a matrix product's work is its multiply-adds, attention's its "
          "keys', another node's its elements") {
    ggml_tensor a = tensor(GGML_OP_NONE, 256, 32000); // weights: 32000 rows of 256
    ggml_tensor b = tensor(GGML_OP_NONE, 256, 7);     // 7 tokens
    ggml_tensor mm = tensor(GGML_OP_MUL_MAT, 32000, 7);
    mm.src[0] = &a, mm.src[1] = &b;
    CHECK(node_work(mm) == uint64_t{32000} * 7 * 256);
    ggml_tensor add = tensor(GGML_OP_ADD, 256, 7, 2);
    add.src[0] = &b, add.src[1] = &b;
    CHECK(node_work(add) == 256 * 7 * 2);
    // Attention: each output element a dot product and a sum over every key (k's ne1).
    ggml_tensor q = tensor(GGML_OP_NONE, 64, 7, 8), k = tensor(GGML_OP_NONE, 64, 512, 2);
    ggml_tensor fa = tensor(GGML_OP_FLASH_ATTN_EXT, 64, 8, 7);
    fa.src[0] = &q, fa.src[1] = &k, fa.src[2] = &k;
    CHECK(node_work(fa) == uint64_t{64} * 8 * 7 * 512 * 2);
    // Saturates instead of wrapping.
    ggml_tensor huge_a = tensor(GGML_OP_NONE, int64_t{1} << 40);
    ggml_tensor huge = tensor(GGML_OP_MUL_MAT, int64_t{1} << 30, int64_t{1} << 30);
    huge.src[0] = &huge_a;
    CHECK(node_work(huge) == UINT64_MAX);
}

TEST_CASE("host threads: small graphs run on one thread, large ones on up to the maximum") {
    const uint64_t unit = work_per_thread_step;
    // A token of a small model (the llama test's: ~11 M multiply-adds in 93 nodes): one
    // thread, whatever the maximum.
    CHECK(threads_for_work(11'353'600, 93, 2) == 1);
    CHECK(threads_for_work(11'353'600, 93, 64) == 1);
    // Its prompt of 128 tokens: every thread there is (here 2).
    CHECK(threads_for_work(329'320'960, 93, 2) == 2);
    // One thread per unit of work per node, within [1, max].
    CHECK(threads_for_work(3 * unit * 10, 10, 8) == 3);
    CHECK(threads_for_work(100 * unit * 10, 10, 8) == 8);
    CHECK(threads_for_work(unit * 10 - 1, 10, 8) == 1);
    CHECK(threads_for_work(2 * unit * 10, 10, 8) == 2);
    // Degenerate inputs: one thread.
    CHECK(threads_for_work(0, 0, 8) == 1);
    CHECK(threads_for_work(UINT64_MAX, 0, 8) == 1);
    CHECK(threads_for_work(UINT64_MAX, 1, 8) == 8);
    CHECK(threads_for_work(UINT64_MAX, 1, 1) == 1);
    CHECK(threads_for_work(UINT64_MAX, 1, 0) == 1);
}

// ---------------------------------------------------------------------------
// The thread floor of a graph run again, chosen by timing (thread_tuner.hpp). The tests
// drive a tuner with the durations a graph would take at each floor.

namespace {
/// Runs `runs` graph runs, each taking cost(floor) ns; returns the runs made per floor.
template <class Cost>
std::map<int, int> drive(ThreadTuner& t, int runs, Cost cost) {
    std::map<int, int> at;
    for (int i = 0; i < runs; ++i) {
        const int f = t.next();
        ++at[f];
        t.report(cost(f));
    }
    return at;
}
constexpr uint64_t us = 1000;
constexpr uint64_t ms = 1000 * us;
/// A token of a small model on quiet CPUs: 0.9 ms on one thread, 0.6 ms on two.
constexpr auto quiet = [](int f) { return f == 1 ? 900 * us : 600 * us; };
/// Beside a busy process: 1 ms on one thread, 35 ms on two (every node waits for the
/// thread the scheduler took off its CPU).
constexpr auto busy_cpus = [](int f) { return f == 1 ? 1 * ms : 35 * ms; };
/// The runs of a first measurement of floors 1 and 2: one untimed and three timed runs
/// on one thread, then two untimed and three timed on two.
constexpr int measure_1_2 = 4 + 5;
/// The same with floors 1, 2 and 4: two untimed and three timed runs on each higher one.
constexpr int measure_1_2_4 = 4 + 5 + 5;
/// Runs of 0.9 ms (one thread) in the first budget.
constexpr int runs_in_first_budget = static_cast<int>(ThreadTuner::first_budget_ns / (900 * us));
} // namespace

TEST_CASE("thread tuner: the floors worth trying") {
    using V = std::vector<int>;
    CHECK(ThreadTuner::floors_for(1, 2) == V{1, 2});
    CHECK(ThreadTuner::floors_for(1, 8) == V{1, 2, 4, 8});
    CHECK(ThreadTuner::floors_for(3, 8) == V{1, 4, 8});
    CHECK(ThreadTuner::floors_for(2, 6) == V{1, 4, 6});
    // Nothing to try when the work already asks for every thread, or there is one.
    CHECK(ThreadTuner::floors_for(2, 2) == V{1});
    CHECK(ThreadTuner::floors_for(8, 8) == V{1});
    CHECK(ThreadTuner::floors_for(1, 1) == V{1});
}

TEST_CASE("thread tuner: one candidate is never measured") {
    ThreadTuner t(ThreadTuner::floors_for(2, 2));
    CHECK_FALSE(t.tuning());
    const auto at = drive(t, 100, [](int) { return 1 * ms; });
    CHECK(at.at(1) == 100);
    CHECK(t.measurements() == 0);
}

TEST_CASE("thread tuner: on quiet CPUs a small graph runs on every thread") {
    ThreadTuner t(ThreadTuner::floors_for(1, 2));
    auto at = drive(t, measure_1_2, quiet);
    REQUIRE(t.measurements() == 1);
    CHECK(t.chosen() == 2);
    // One thread: a first run (untimed), then three timed runs; two threads: two untimed
    // runs (waking the second thread), then three timed ones.
    CHECK(at[1] == 4);
    CHECK(at[2] == 5);
    // Then mostly on two threads, measuring again now and then at a small cost.
    at = drive(t, 2000, quiet);
    CHECK(t.chosen() == 2);
    CHECK(at[2] > 1900);
    CHECK(t.measurements() > 1);
}

TEST_CASE("thread tuner: on busy CPUs a slow candidate costs one run") {
    const auto busy = busy_cpus;
    ThreadTuner t(ThreadTuner::floors_for(1, 2));
    auto at = drive(t, 10, busy);
    REQUIRE(t.measurements() == 1);
    CHECK(t.chosen() == 1);
    // Its first run, 35 times the least floor's median: more than waking a thread or a
    // one-off costs (over twice the 10 ms margin).
    CHECK(at[2] == 1);
    // The choice holds for at least 50 times what the slow run cost beyond it.
    CHECK(t.budget_ns() >= 50 * 34 * ms);
    at = drive(t, 1500, busy);
    CHECK(at[2] == 0);
    CHECK(t.measurements() == 1);
    // Measuring costs about 2 % over the long run.
    ThreadTuner u(ThreadTuner::floors_for(1, 2));
    at = drive(u, 100'000, busy);
    const double total = at[1] * 1.0 + at[2] * 35.0, best = 100'000 * 1.0;
    CHECK(total / best < 1.05);
}

TEST_CASE("thread tuner: more threads win only with every run faster; one slow run, a "
          "one-off, is measured again soon, once") {
    // Runs on two threads take 0.6 ms, but some take 10 ms (another process's thread
    // woken on the CPU of one of them, until the scheduler moves it): not beyond what such
    // a one-off costs (twice the 10 ms margin).
    std::vector<int> slow_at; // the runs on two threads (counted from 1) that are slow
    int run_at_2 = 0;
    const auto cost = [&](int f) {
        if (f == 1) return 900 * us;
        ++run_at_2;
        return std::count(slow_at.begin(), slow_at.end(), run_at_2) ? 10 * ms : 600 * us;
    };
    // The first measurement's first timed run is slow: one thread is kept, for the first
    // budget only (20 ms); the next measurement chooses two threads.
    slow_at = {3};
    ThreadTuner t(ThreadTuner::floors_for(1, 2));
    drive(t, measure_1_2, cost);
    REQUIRE(t.measurements() == 1);
    CHECK(t.chosen() == 1);
    CHECK(t.budget_ns() == ThreadTuner::first_budget_ns);
    auto at = drive(t, runs_in_first_budget + 1 + measure_1_2, cost);
    CHECK(t.measurements() == 2);
    CHECK(t.chosen() == 2);
    // A second such verdict in a row holds for 50 times what the slow run cost beyond one
    // thread's median, as any other: a run slow that often is not a one-off.
    slow_at = {3, 3 + 5};
    run_at_2 = 0;
    ThreadTuner u(ThreadTuner::floors_for(1, 2));
    drive(u, measure_1_2, cost);
    REQUIRE(u.budget_ns() == ThreadTuner::first_budget_ns);
    drive(u, runs_in_first_budget + 1 + measure_1_2, cost);
    REQUIRE(u.measurements() == 2);
    CHECK(u.chosen() == 1);
    CHECK(u.budget_ns() >= 50 * (10 * ms - 900 * us));
    // A slow run beyond a one-off's cost (35 ms: a busy CPU's time slices) holds it too.
    int run_at_2_busy = 0;
    ThreadTuner v(ThreadTuner::floors_for(1, 2));
    drive(v, measure_1_2, [&](int f) {
        if (f == 1) return 900 * us;
        return ++run_at_2_busy == 3 ? 35 * ms : 600 * us;
    });
    REQUIRE(v.measurements() == 1);
    CHECK(v.chosen() == 1);
    CHECK(v.budget_ns() == 50 * (35 * ms - 900 * us));
}

TEST_CASE("thread tuner: one-offs now and then on more threads do not keep them out") {
    // Quiet CPUs where one run on two threads in 100 takes 15 ms (a thread that shared a
    // CPU with another until the scheduler moved it): two threads still save more than
    // those runs cost (0.83 of one thread's time throughout), and are used for most runs.
    // Where one run in 4 takes 15 ms, one thread is, and measuring again soon costs a few
    // percent at most.
    for (const int one_in : {100, 4}) {
        int run_at_2 = 0;
        double took_ms = 0;
        const auto cost = [&](int f) {
            const uint64_t ns = f == 1 ? 900 * us : ++run_at_2 % one_in == 0 ? 15 * ms : 600 * us;
            took_ms += double(ns) / double(ms);
            return ns;
        };
        ThreadTuner t(ThreadTuner::floors_for(1, 2));
        const auto at = drive(t, 100'000, cost);
        const double of_one_thread = took_ms / (100'000 * 0.9);
        INFO("one run in " << one_in << " slow: " << at.at(2) << " runs on two threads, "
                           << of_one_thread << " of one thread's time, " << t.measurements()
                           << " measurements, " << t.fallbacks() << " falls back");
        if (one_in == 100) {
            CHECK(at.at(2) > 70'000);
            CHECK(of_one_thread < 0.9); // one-offs held one thread long before: 0.97
        } else {
            CHECK(at.at(2) < 10'000);
            CHECK(of_one_thread < 1.05);
        }
    }
}

TEST_CASE("thread tuner: a first run slowed by starting threads does not drop more threads") {
    // Floor 2's first run in a measurement starts its second thread: 5 ms, over five
    // times one thread's 0.9 ms but not eight; its timed runs then win.
    int run_at_2 = 0;
    const auto cost = [&](int f) {
        if (f == 1) return 900 * us;
        return ++run_at_2 == 1 ? 5 * ms : 600 * us;
    };
    ThreadTuner t(ThreadTuner::floors_for(1, 2));
    const auto at = drive(t, measure_1_2, cost);
    REQUIRE(t.measurements() == 1);
    CHECK(t.chosen() == 2);
    CHECK(at.at(2) == 5);
}

TEST_CASE("thread tuner: a woken thread waiting for a CPU of its own does not drop more "
          "threads") {
    // Floor 2's first runs in a measurement wake its second thread, which the scheduler
    // may put on the first one's CPU until it moves it (ggml-cpu's barriers spin
    // meanwhile): the first run 12 ms (over 8 times one thread's 0.9 ms and over 10 ms),
    // or the second 8 ms, or the first 4 ms and the second 13 ms. Its later runs win: two
    // threads are chosen each time.
    struct Start {
        uint64_t first, second;
    };
    for (const Start start :
         {Start{12 * ms, 600 * us}, Start{600 * us, 8 * ms}, Start{4 * ms, 13 * ms}}) {
        int run_at_2 = 0;
        const auto cost = [&](int f) {
            if (f == 1) return 900 * us;
            ++run_at_2;
            return run_at_2 == 1 ? start.first : run_at_2 == 2 ? start.second : 600 * us;
        };
        ThreadTuner t(ThreadTuner::floors_for(1, 2));
        const auto at = drive(t, measure_1_2, cost);
        INFO("first runs on two threads: " << start.first / us << " and " << start.second / us
                                           << " us");
        REQUIRE(t.measurements() == 1);
        CHECK(t.chosen() == 2);
        CHECK(at.at(2) == 5);
        // The untimed runs are not what the choice holds for: 50 times what one thread's
        // runs cost beyond two threads' median.
        CHECK(t.budget_ns() == 50 * 3 * 300 * us);
    }
}

TEST_CASE("thread tuner: on a short graph, a first run that starts threads does not drop them") {
    // 0.5 ms on one thread, 0.3 ms on two, whose first run in each measurement costs
    // 5 ms (ten times one thread's median, but under 10 ms: starting a thread, not a
    // wait for a busy CPU). Two threads are chosen, measurement after measurement.
    int last = 1;
    const auto cost = [&](int f) -> uint64_t {
        const bool starts = f == 2 && last == 1;
        last = f;
        if (f == 1) return 500 * us;
        return starts ? 5 * ms : 300 * us;
    };
    ThreadTuner t(ThreadTuner::floors_for(1, 2));
    auto at = drive(t, measure_1_2, cost);
    REQUIRE(t.measurements() == 1);
    CHECK(t.chosen() == 2);
    at = drive(t, 20'000, cost);
    CHECK(t.measurements() > 3);
    CHECK(t.chosen() == 2);
    CHECK(at[2] > 19'000);
}

TEST_CASE("thread tuner: what switching floors costs does not keep more threads out") {
    // A run on two threads right after one on one thread pays for waking the second
    // thread (0.3 ms). Each candidate's runs in a measurement come in a row after an
    // untimed one: alternating, every run on two threads would pay it (0.9 ms, not
    // faster than one thread) and one thread would be kept.
    int last = 1;
    const auto cost = [&](int f) {
        const uint64_t c = f == 1 ? 900 * us : (last == 1 ? 900 * us : 600 * us);
        last = f;
        return c;
    };
    ThreadTuner t(ThreadTuner::floors_for(1, 2));
    drive(t, measure_1_2, cost);
    REQUIRE(t.measurements() == 1);
    CHECK(t.chosen() == 2);
    const auto at = drive(t, 2000, cost);
    CHECK(at.at(2) > 1900);
}

TEST_CASE("thread tuner: rare very slow runs on more threads send it back to one") {
    // Quiet at first; then one run in 50 on two threads takes 100 ms (a thread taken off
    // its CPU for time slices): the median of three does not see it, the mean does.
    bool tail = false;
    int run_at_2 = 0;
    const auto cost = [&](int f) {
        if (f == 1) return 900 * us;
        return tail && ++run_at_2 % 50 == 0 ? 100 * ms : 600 * us;
    };
    ThreadTuner t(ThreadTuner::floors_for(1, 2));
    drive(t, 100, cost);
    REQUIRE(t.chosen() == 2);
    tail = true;
    auto at = drive(t, 60, cost);
    CHECK(t.fallbacks() == 1);
    CHECK(t.chosen() == 1);
    CHECK(at[2] <= 50);
    // It stays there for 50 times what the runs on two threads cost beyond one thread's
    // (the slow run's 100 ms less what the fast ones saved).
    CHECK(t.budget_ns() >= 50 * 50 * ms);
    at = drive(t, 3000, cost);
    CHECK(at[2] == 0);
    // Starting over forgets all of it.
    t.reset(ThreadTuner::floors_for(1, 2));
    CHECK(t.measurements() == 0);
    CHECK(t.fallbacks() == 0);
    CHECK(t.measuring());
    CHECK(t.budget_ns() == ThreadTuner::first_budget_ns);
    drive(t, measure_1_2, quiet);
    CHECK(t.chosen() == 2);
    CHECK(t.budget_ns() == 50 * 3 * 300 * us);
}

TEST_CASE("thread tuner: a run of a time slice on more threads sends it back to one at once") {
    // Two threads chosen on quiet CPUs; then a run on two threads takes 35 ms (its second
    // thread waited for a CPU a busy process had). The mean is not taken before 32 runs,
    // but this run alone costs more than 8 runs on one thread: back to one at once. A run
    // of 2 ms among fast ones does not.
    ThreadTuner t(ThreadTuner::floors_for(1, 2));
    drive(t, measure_1_2, quiet);
    REQUIRE(t.chosen() == 2);
    REQUIRE(t.next() == 2);
    t.report(2 * ms);
    CHECK(t.fallbacks() == 0);
    REQUIRE(t.next() == 2);
    t.report(35 * ms);
    CHECK(t.fallbacks() == 1);
    CHECK(t.next() == 1);
    // For 50 times what the two runs cost beyond one thread's median.
    CHECK(t.budget_ns() == 50 * (2 * ms + 35 * ms - 2 * 900 * us));
}

TEST_CASE("thread tuner: a one-off on more threads sends it back to one for the first "
          "budget, once") {
    // Two threads chosen on quiet CPUs; then a run on two threads takes 15 ms: over 10 ms
    // beyond one thread's median, but not beyond what a one-off costs (20 ms). Back to one
    // thread at once, measured again after the first budget.
    const auto run_at = [](ThreadTuner& t, uint64_t ns) {
        REQUIRE(t.next() == 2);
        t.report(ns);
    };
    ThreadTuner t(ThreadTuner::floors_for(1, 2));
    drive(t, measure_1_2, quiet);
    run_at(t, 15 * ms);
    CHECK(t.fallbacks() == 1);
    CHECK(t.next() == 1);
    CHECK(t.budget_ns() == ThreadTuner::first_budget_ns);
    drive(t, runs_in_first_budget + 1 + measure_1_2, quiet);
    REQUIRE(t.measurements() == 2);
    REQUIRE(t.chosen() == 2);
    // Another one-off before two threads have held for their budget and 32 runs: held
    // long this time.
    run_at(t, 15 * ms);
    CHECK(t.fallbacks() == 2);
    CHECK(t.budget_ns() == 50 * (15 * ms - 900 * us));
    // Once two threads have held for their budget and 32 runs, a one-off right after the
    // next measurement is measured again soon.
    drive(t, 20'000, quiet);
    const unsigned m = t.measurements();
    while (t.measurements() == m)
        t.report(quiet(t.next()));
    REQUIRE(t.chosen() == 2);
    run_at(t, 15 * ms);
    CHECK(t.fallbacks() == 3);
    CHECK(t.budget_ns() == ThreadTuner::first_budget_ns);
}

TEST_CASE("thread tuner: it follows the machine getting busy and quiet again") {
    bool busy = false;
    const auto cost = [&](int f) { return busy ? busy_cpus(f) : quiet(f); };
    ThreadTuner t(ThreadTuner::floors_for(1, 2));
    drive(t, 500, cost);
    REQUIRE(t.chosen() == 2);
    // Busy: three slow runs in a row start a measurement at once (or the budget's end
    // does), one thread first; two threads are dropped at their first run.
    busy = true;
    auto at = drive(t, 200, cost);
    CHECK(t.chosen() == 1);
    CHECK(at[2] <= 4);
    // Quiet again: the next measurement, within the budget of compute time, goes back.
    busy = false;
    const uint64_t budget = t.budget_ns();
    at = drive(t, static_cast<int>(budget / (900 * us)) + 20, cost);
    CHECK(t.chosen() == 2);
}

TEST_CASE("thread tuner: a confirmed choice is measured less often, a changed one soon") {
    ThreadTuner t(ThreadTuner::floors_for(1, 4)); // floors 1, 2, 4
    const auto cost = [](int f) { return f == 4 ? 400 * us : f == 2 ? 500 * us : 700 * us; };
    drive(t, measure_1_2_4, cost);
    REQUIRE(t.measurements() == 1);
    CHECK(t.chosen() == 4);
    // 50 times what floors 1 and 2 cost beyond floor 4's median: 3 x 300 and 3 x 100 us.
    CHECK(t.budget_ns() == 50 * (3 * 300 * us + 3 * 100 * us));
    uint64_t last = t.budget_ns();
    for (unsigned m = 2; m <= 12; ++m) {
        while (t.measurements() < m)
            t.report(cost(t.next()));
        CHECK(t.chosen() == 4);
        const uint64_t expect = std::min(2 * last, ThreadTuner::max_budget_ns);
        CHECK(t.budget_ns() >= expect);
        CHECK(t.budget_ns() <= ThreadTuner::max_budget_ns);
        last = t.budget_ns();
    }
    CHECK(last == ThreadTuner::max_budget_ns);
}

TEST_CASE("thread tuner: a floor that loses on one run does not take another out with it") {
    // Floors 1, 2, 4: floor 2 has the lowest median but one run over floor 1's median, so
    // it cannot be chosen; floor 4, three times as fast as floor 1 on every run, is.
    std::map<int, int> runs;
    const auto cost = [&](int f) -> uint64_t {
        const int k = runs[f]++;
        if (f == 1) return k == 2 ? 3000 * us : 1000 * us; // its third run slow too
        if (f == 2) return k == 2 ? 2000 * us : 100 * us;
        return 300 * us;
    };
    ThreadTuner t(ThreadTuner::floors_for(1, 4));
    drive(t, measure_1_2_4, cost);
    REQUIRE(t.measurements() == 1);
    CHECK(t.chosen() == 4);
    // The least floor takes all its runs, however slow against the others.
    CHECK(runs[1] == 4);
}

TEST_CASE("thread tuner: durations of 0 ns and near 2^64 ns neither wrap nor stop it") {
    // Durations come from a clock: a run may read 0 ns (a coarse clock) or anything. Each
    // run counts at least 1 ns toward the budget, so it still measures again; sums and
    // products saturate, so a huge run is slow, not fast.
    ThreadTuner t(ThreadTuner::floors_for(1, 2));
    drive(t, measure_1_2, [](int) { return uint64_t{0}; });
    REQUIRE(t.measurements() == 1);
    for (uint64_t i = 0; i <= t.budget_ns(); ++i) // 1 ns a run: budget_ns() runs
        t.report(0);
    CHECK(t.measuring());
    ThreadTuner u(ThreadTuner::floors_for(1, 2));
    const auto huge = [](int f) { return f == 1 ? UINT64_MAX / 2 + 1 : uint64_t{1000}; };
    drive(u, measure_1_2, huge);
    REQUIRE(u.measurements() == 1);
    CHECK(u.chosen() == 2); // every run on two threads beat one thread's median
    const auto at = drive(u, 1000, huge);
    CHECK(at.at(2) > 900);
}
