// apir-bench: the library's hot paths, each measured against a reference in the same
// process, in interleaved batches so that drift (frequency, the other tenant of the
// machine) affects both sides alike. See BENCHMARKS.md for what each line means.
//
//     apir-bench            a readable table
//     apir-bench --json     one JSON object per line
//     apir-bench --quick    fewer samples (a full run in a few seconds, for CI)
#include "alloc_hook.hpp"
#include "bench_protocol.hpp"
#include "report.hpp"

#include <apir/apir.hpp>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <fmt/format.h>
#include <functional>
#include <initializer_list>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <linux/futex.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#if APIR_HAVE_DRM
#include <apir/sim/sim_device.hpp>
#include <apir/virtgpu.hpp>
#endif

#ifndef APIR_BENCH_BACKEND_PATH
#define APIR_BENCH_BACKEND_PATH "libapir-bench-backend.so"
#endif

namespace apir_bench {
namespace {

using namespace std::chrono;
using BenchClock = steady_clock;
using Session = apir::Session<apir::LoopbackTransport>;

// How many samples each benchmark takes.
struct Plan {
    bool quick = false;
    size_t rt_rounds = 2000;   // interleaved rounds: ours, spin limit, poll15
    size_t rt_batch = 200;     // calls timed together (per-call time = batch / n)
    size_t rt_poll_batch = 10; // the 15 µs poll is ~200x slower: smaller batches
    size_t rt_warmup = 20;     // untimed calls first: wake the host thread
    size_t bulk_reps = 30;
    size_t codec_rounds = 2000;
    size_t codec_batch = 1000;
    size_t wait_calls = 300;
    size_t alloc_warmup = 1000;
    size_t alloc_calls = 20000;
    size_t drm_rounds = 200; // interleaved rounds: DRM sim, loopback
    size_t drm_batch = 50;
    size_t shared_rounds = 30; // shared_cpu: interleaved rounds on one CPU
    size_t shared_batch = 200;
    size_t many_rounds = 10;   // many_callers: interleaved rounds, 1 caller vs 8
    size_t many_calls = 16000; // calls per round, shared by the callers
    size_t spaced_rounds = 20; // spaced: rounds of spaced calls, wakes, a batch
    size_t spaced_calls = 20;
    size_t inline_rounds = 1000; // inline: interleaved rounds of batches
    size_t inline_batch = 200;
    size_t memory_calls = 64;

    static Plan quick_plan() {
        Plan p;
        p.quick = true;
        p.rt_rounds = 200;
        p.bulk_reps = 4;
        p.codec_rounds = 200;
        p.wait_calls = 40;
        p.alloc_calls = 2000;
        p.drm_rounds = 30;
        p.shared_rounds = 6;
        p.many_rounds = 3;
        p.many_calls = 8000;
        p.spaced_rounds = 5;
        p.inline_rounds = 100;
        p.memory_calls = 16;
        return p;
    }
};

[[noreturn]] void fatal(std::string_view what, const apir::Error& e) {
    fmt::print(stderr, "apir-bench: {}: {}\n", what, e);
    std::exit(1);
}
[[noreturn]] void fatal(std::string_view what) {
    fmt::print(stderr, "apir-bench: {}\n", what);
    std::exit(1);
}
template <class T>
T take(apir::Expected<T> r, std::string_view what) {
    if (!r) fatal(what, r.error());
    return std::move(*r);
}

double median(std::vector<double> v) {
    if (v.empty()) return 0;
    const size_t mid = v.size() / 2;
    std::nth_element(v.begin(), v.begin() + static_cast<long>(mid), v.end());
    double m = v[mid];
    if (v.size() % 2 == 0)
        m = (m + *std::max_element(v.begin(), v.begin() + static_cast<long>(mid))) / 2;
    return m;
}

double ns_since(BenchClock::time_point t0, BenchClock::time_point t1) {
    return static_cast<double>(duration_cast<nanoseconds>(t1 - t0).count());
}

/// Makes the compiler assume v is read and all memory may have changed.
template <class T>
void keep(T& v) {
    asm volatile("" : : "r"(&v) : "memory");
}

/// v, as a value the compiler cannot know (so checks against it stay in the code).
size_t opaque(size_t v) {
    asm volatile("" : "+r"(v));
    return v;
}

/// Sessions over the threaded loopback, one per wait policy, all loading the bench
/// backend. Each has its own host thread, which sleeps while its session is idle.
class Sessions {
public:
    explicit Sessions(std::string backend) : backend_(std::move(backend)) {}
    [[nodiscard]] const std::string& backend() const noexcept { return backend_; }
    Session& adaptive() { return get(adaptive_, apir::WaitPolicy::adaptive()); }
    Session& poll15() { return get(poll15_, apir::WaitPolicy::fixed_poll(microseconds(15))); }
    Session& spin() { return get(spin_, apir::WaitPolicy::spin_only()); }

private:
    Session& get(std::unique_ptr<Session>& slot, apir::WaitPolicy wait) {
        if (!slot) {
            apir::LoopbackOptions lo;
            lo.host.config[std::string(apir::config_library_path)] = backend_;
            apir::SessionOptions so;
            so.wait = wait;
            slot = std::make_unique<Session>(apir::LoopbackTransport(std::move(lo)), so);
            take(slot->connect(), "connect to the loopback host with " + backend_);
        }
        return *slot;
    }
    std::string backend_;
    std::unique_ptr<Session> adaptive_, poll15_, spin_;
};

// ---------------------------------------------------------------------------
// roundtrip: one empty FORWARD vs. the fastest a two-thread round trip can be

std::unique_ptr<Session> open_session(const std::string& backend, apir::LoopbackOptions::Mode mode,
                                      apir::SessionOptions so = {}) {
    apir::LoopbackOptions lo;
    lo.mode = mode;
    lo.host.config[std::string(apir::config_library_path)] = backend;
    auto s = std::make_unique<Session>(apir::LoopbackTransport(std::move(lo)), std::move(so));
    take(s->connect(), "connect to the loopback host with " + backend);
    return s;
}

/// Binds the calling thread to one CPU; false if it cannot.
bool bind_to(int cpu) {
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(cpu, &one);
    return sched_setaffinity(0, sizeof one, &one) == 0;
}

/// Two different CPUs this process may use: one for the guest (calling) thread, one
/// for the other half of a round trip (the ping-pong's thread, the loopback's host
/// thread). Chosen once, so that every batch of a line runs on the same pair.
struct CpuPair {
    int guest = -1, host = -1;
    [[nodiscard]] bool valid() const noexcept { return guest >= 0 && host >= 0; }

    /// The caller's CPU and the first other one it may run on; invalid with one CPU.
    static CpuPair pick() {
        CpuPair p;
        cpu_set_t allowed;
        const int here = sched_getcpu();
        if (here < 0 || sched_getaffinity(0, sizeof allowed, &allowed) != 0) return p;
        for (int c = 0; c < CPU_SETSIZE; ++c) {
            if (c != here && CPU_ISSET(c, &allowed)) {
                p.guest = here;
                p.host = c;
                break;
            }
        }
        return p;
    }
};

/// Restores the calling thread's CPUs when destroyed.
class KeepAffinity {
public:
    KeepAffinity() { ok_ = sched_getaffinity(0, sizeof saved_, &saved_) == 0; }
    ~KeepAffinity() {
        if (ok_) sched_setaffinity(0, sizeof saved_, &saved_);
    }
    KeepAffinity(const KeepAffinity&) = delete;
    KeepAffinity& operator=(const KeepAffinity&) = delete;

private:
    cpu_set_t saved_{};
    bool ok_ = false;
};

/// The spin limit: two threads and one atomic word. The guest stores an odd value,
/// the other thread spins until it sees it and stores the next even value, the
/// guest spins until it sees that. No queue, no lock, no pause instruction. Between
/// batches the thread is parked (blocked), so it takes no CPU from the others.
class PingPong {
public:
    PingPong() : thread_([this] { serve(); }) {}
    ~PingPong() {
        ctl_.store(quit, std::memory_order_release);
        ctl_.notify_one();
        thread_.join();
    }
    PingPong(const PingPong&) = delete;
    PingPong& operator=(const PingPong&) = delete;

    /// Nanoseconds per round trip over n round trips, after `warmup` untimed ones.
    /// The limit is a round trip between two CPUs, so for the batch the two threads
    /// are bound to two different CPUs, `cpus` (on a busy machine the scheduler may
    /// otherwise wake the second thread beside the first, and the ping-pong measures
    /// time slices). Without two CPUs the threads run where the scheduler puts them.
    double run(size_t warmup, size_t n, const CpuPair& cpus) {
        cpu_set_t mine;
        const bool bound = cpus.valid() && sched_getaffinity(0, sizeof mine, &mine) == 0;
        there_.store(bound ? cpus.host : -1, std::memory_order_relaxed);
        if (bound) bind_to(cpus.guest);
        ctl_.store(running, std::memory_order_release);
        ctl_.notify_one();
        for (size_t i = 0; i < warmup; ++i)
            trip();
        const auto t0 = BenchClock::now();
        for (size_t i = 0; i < n; ++i)
            trip();
        const auto t1 = BenchClock::now();
        ctl_.store(parked, std::memory_order_release);
        if (bound) sched_setaffinity(0, sizeof mine, &mine);
        return ns_since(t0, t1) / static_cast<double>(n);
    }

private:
    static constexpr uint32_t parked = 0, running = 1, quit = 2;

    // Past this many looks the other thread is not running (more threads than CPUs):
    // yield so the run still ends. Never reached while both threads have a CPU.
    static constexpr uint32_t looks_before_yield = 1u << 16;

    void trip() {
        const uint32_t ask = seq_ + 1; // odd
        word_.store(ask, std::memory_order_release);
        for (uint32_t i = 1; word_.load(std::memory_order_acquire) != ask + 1; ++i)
            if (i % looks_before_yield == 0) std::this_thread::yield();
        seq_ = ask + 1;
    }
    void serve() {
        for (;;) {
            const uint32_t c = ctl_.load(std::memory_order_acquire);
            if (c == quit) return;
            if (c == parked) {
                ctl_.wait(parked, std::memory_order_acquire);
                continue;
            }
            if (const int cpu = there_.load(std::memory_order_relaxed); cpu >= 0) bind_to(cpu);
            for (uint32_t i = 1;; ++i) {
                const uint32_t w = word_.load(std::memory_order_acquire);
                if (w & 1) {
                    word_.store(w + 1, std::memory_order_release);
                } else if (ctl_.load(std::memory_order_relaxed) != running) {
                    break;
                } else if (i % looks_before_yield == 0) {
                    std::this_thread::yield();
                }
            }
        }
    }

    alignas(64) std::atomic<uint32_t> word_{0};
    alignas(64) std::atomic<uint32_t> ctl_{parked};
    uint32_t seq_ = 0;           // the guest's side only
    std::atomic<int> there_{-1}; // the other thread's CPU during a batch (-1: unbound)
    std::thread thread_;
};

/// Between batches of different setups: every helper thread of the last batch goes
/// to sleep (an idle loopback host spins 50 µs first). A thread the next batch wakes
/// then finds a free CPU, as in a program that runs one setup; otherwise the
/// scheduler may put it beside the caller, and both halves of a call share one CPU.
void settle() {
    std::this_thread::sleep_for(microseconds(200));
}

/// Runs the steps of one round of interleaved measurements: in order on even rounds,
/// in reverse on odd ones, so that no measurement always follows the same one
/// (caches, the memory controller and the scheduler carry state from step to step).
void in_turn(size_t round, std::initializer_list<std::function<void()>> steps) {
    if (round % 2 == 0) {
        for (const auto& step : steps)
            step();
    } else {
        for (auto it = steps.end(); it != steps.begin();)
            (*--it)();
    }
}

/// Nanoseconds per empty FORWARD over n calls, after `warmup` untimed ones.
template <class S>
double nop_batch(S& s, size_t warmup, size_t n) {
    for (size_t i = 0; i < warmup; ++i)
        take(s.template call<bench::Nop>(apir::Empty{}), "nop call");
    const auto t0 = BenchClock::now();
    for (size_t i = 0; i < n; ++i)
        if (auto r = s.template call<bench::Nop>(apir::Empty{}); !r) fatal("nop call", r.error());
    const auto t1 = BenchClock::now();
    return ns_since(t0, t1) / static_cast<double>(n);
}

Result bench_roundtrip(const Plan& p, Sessions& sessions) {
    Session& ours = sessions.adaptive();
    Session& poll = sessions.poll15();
    // Like for like: the spin limit runs on two fixed CPUs, and so does one session's
    // call. Its host thread is created while this thread is bound to the host's CPU (a
    // new thread inherits the binding); for its batches this thread binds itself to the
    // guest's CPU, as the ping-pong's guest side does. The other sessions run where the
    // scheduler puts them.
    const CpuPair cpus = CpuPair::pick();
    std::unique_ptr<Session> pinned;
    if (cpus.valid()) {
        KeepAffinity keep;
        if (bind_to(cpus.host)) {
            apir::SessionOptions so;
            so.wait = apir::WaitPolicy::adaptive();
            pinned = open_session(sessions.backend(), apir::LoopbackOptions::Mode::threaded, so);
        }
    }
    auto pinned_batch = [&] {
        KeepAffinity keep;
        bind_to(cpus.guest);
        return nop_batch(*pinned, p.rt_warmup, p.rt_batch);
    };
    PingPong spin;
    std::vector<double> ours_ns, pinned_ns, spin_ns, poll_ns;
    for (size_t r = 0; r < p.rt_rounds; ++r) {
        in_turn(r,
                {[&] { ours_ns.push_back(nop_batch(ours, p.rt_warmup, p.rt_batch)); }, settle,
                 [&] {
                     if (pinned) pinned_ns.push_back(pinned_batch());
                 },
                 settle, [&] { spin_ns.push_back(spin.run(p.rt_warmup, p.rt_batch, cpus)); },
                 settle, [&] { poll_ns.push_back(nop_batch(poll, 2, p.rt_poll_batch)); }, settle});
    }
    const double o = median(ours_ns), s = median(spin_ns), q = median(poll_ns);
    const double op = pinned ? median(pinned_ns) : std::nan("");
    // Two threads that each have a CPU pass the word back in well under a microsecond.
    // A slower ping-pong means they shared one CPU (a busy machine): no limit to judge by.
    const bool limit_valid = cpus.valid() && pinned && s < 10'000;
    Result res("roundtrip", "empty FORWARD over the threaded loopback, median ns per call");
    res.number("ours_pinned_ns", op, 1, "ours, guest + host on the limit's two CPUs", "ns")
        .number("ours_ns", o, 1, "ours, unpinned (default adaptive wait)", "ns")
        .number("spin_limit_ns", s, 1, "spin limit (atomic ping-pong, two CPUs)", "ns")
        .number("poll15_ns", q, 1, "same call, fixed 15 µs poll (ggml's wait)", "ns")
        .number("unpinned_over_spin_limit", o / s, 3, "ours unpinned / spin limit")
        .integer("batches", p.rt_rounds)
        .integer("calls_per_batch", p.rt_batch)
        .flag("spin_limit_valid", limit_valid, "pinned call and ping-pong had two CPUs")
        .target("spin_limit", op / s, limit_valid && op <= 2 * s,
                "ours_pinned_ns <= 2 * spin_limit_ns")
        .target("poll15", q / o, q >= 100 * o, "poll15_ns >= 100 * ours_ns");
    return res;
}

// ---------------------------------------------------------------------------
// bulk: 64 MiB guest -> host through the staging blob vs. one plain memcpy

/// Anonymous memory, every page touched (no first-touch faults while timing).
class Buffer {
public:
    explicit Buffer(size_t n) : size_(n) {
        void* p = mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) fatal("mmap of a bench buffer failed");
        data_ = static_cast<std::byte*>(p);
        std::memset(data_, 0, n);
    }
    ~Buffer() { munmap(data_, size_); }
    Buffer(const Buffer&) = delete;
    Buffer& operator=(const Buffer&) = delete;
    [[nodiscard]] std::byte* data() const noexcept { return data_; }

private:
    std::byte* data_ = nullptr;
    size_t size_ = 0;
};

template <class S>
Result bulk_on(const Plan& p, S& s, std::string name, std::string title) {
    constexpr size_t bytes = size_t{64} << 20;
    Buffer source(bytes), ref_dst(bytes), ref_tensor(bytes);
    for (size_t i = 0; i < bytes / 8; ++i) {
        const uint64_t w = i * 0x9e3779b97f4a7c15ull;
        std::memcpy(source.data() + i * 8, &w, 8);
    }
    bench::RangeEnds want;
    std::memcpy(&want.first, source.data(), 8);
    std::memcpy(&want.last, source.data() + bytes - 8, 8);
    take(s.template call<bench::AllocTensor>(bench::AllocTensorRequest{bytes}), "alloc_tensor");

    // Ours: the guest writes the bytes into the reused staging blob (the one copy),
    // then one FORWARD names the blob. consume: the host reads the range in place;
    // set_tensor: the host also copies it into its tensor, as ggml's CPU buffer does.
    auto transfer = [&](bool set_tensor) {
        const auto t0 = BenchClock::now();
        auto staged = take(s.stage(bytes), "stage");
        std::memcpy(staged.bytes().data(), source.data(), bytes);
        const bench::BlobRange range{staged.res_id(), 0, bytes};
        auto r = set_tensor ? s.template call<bench::SetTensor>(range)
                            : s.template call<bench::Consume>(range);
        const auto t1 = BenchClock::now();
        const auto got = take(std::move(r), set_tensor ? "set_tensor" : "consume");
        if (got.first != want.first || got.last != want.last)
            fatal("the host saw other bytes than the guest staged");
        return ns_since(t0, t1);
    };
    auto one_memcpy = [&] {
        const auto t0 = BenchClock::now();
        std::memcpy(ref_dst.data(), source.data(), bytes);
        keep(*ref_dst.data());
        return ns_since(t0, BenchClock::now());
    };
    auto two_memcpy = [&] {
        const auto t0 = BenchClock::now();
        std::memcpy(ref_dst.data(), source.data(), bytes);
        keep(*ref_dst.data());
        std::memcpy(ref_tensor.data(), ref_dst.data(), bytes);
        keep(*ref_tensor.data());
        return ns_since(t0, BenchClock::now());
    };

    // The first transfer of a session creates the staging blob: every page faults in.
    const bool fresh = s.staging_creates() == 0;
    const double cold = transfer(false);
    std::vector<double> ours, ref, st, ref2;
    for (size_t i = 0; i < p.bulk_reps; ++i) {
        in_turn(i, {[&] { ours.push_back(transfer(false)); }, [&] { ref.push_back(one_memcpy()); },
                    [&] { st.push_back(transfer(true)); }, [&] { ref2.push_back(two_memcpy()); }});
    }
    if (s.staging_creates() != 1 && fresh) fatal("the staging blob was not reused");
    // The fastest of the reps, each side: memory bandwidth on a shared machine comes
    // and goes (here some 64 MiB copies take twice as long, ours and memcpy alike),
    // and the fastest transfer is what a path does undisturbed. Medians are given too.
    auto gbps = [&](double ns) { return static_cast<double>(bytes) / ns; }; // bytes/ns = GB/s
    auto best = [&](const std::vector<double>& v) {
        return gbps(*std::min_element(v.begin(), v.end()));
    };
    const double o = best(ours), m = best(ref), t = best(st), m2 = best(ref2);
    Result res(name, title);
    res.integer("bytes", bytes)
        .number("ours_gbps", o, 2, "ours: stage + write + FORWARD (host reads in place)", "GB/s")
        .number("memcpy_gbps", m, 2, "reference: one memcpy of the same bytes", "GB/s")
        .number("set_tensor_gbps", t, 2, "ours + host copies into its tensor", "GB/s")
        .number("two_memcpy_gbps", m2, 2, "reference: two memcpys back to back", "GB/s")
        .number("set_tensor_ratio", t / m2, 3, "set_tensor / two memcpys")
        .number("ours_median_gbps", gbps(median(ours)), 2, "ours, median", "GB/s")
        .number("memcpy_median_gbps", gbps(median(ref)), 2, "one memcpy, median", "GB/s")
        .number("cold_gbps", fresh ? gbps(cold) : std::nan(""), 2,
                "first transfer (fresh blob, page faults)", "GB/s")
        .integer("reps", p.bulk_reps)
        .target("memcpy", o / m, o >= 0.9 * m, "ours_gbps >= 0.9 * memcpy_gbps");
    return res;
}

Result bench_bulk(const Plan& p, Sessions& sessions) {
    return bulk_on(p, sessions.adaptive(), "bulk",
                   "64 MiB guest -> host through the staging blob, best of the reps, GB/s");
}

// ---------------------------------------------------------------------------
// roundtrip_vtest, bulk_vtest: virglrenderer's APIR host through virgl_test_server
//
// The server is started by the user with the bench backend (--vtest-socket). The
// floor of a call over vtest is one PING round trip on the same socket (the cheapest
// message the server answers; no APIR work): a call is timed against PINGs in
// interleaved batches, and judged on call / PING <= 2.

std::unique_ptr<apir::Session<apir::VtestTransport>> vtest_session(const std::string& socket) {
    apir::VtestOptions o;
    o.socket_path = socket;
    auto t = take(apir::VtestTransport::open(std::move(o)), "connect to the vtest server");
    auto s = std::make_unique<apir::Session<apir::VtestTransport>>(std::move(t));
    take(s->connect(), "connect through vtest (does the server load the bench backend?)");
    return s;
}

Result vtest_skipped(std::string name) {
    return Result::skipped(name, "no --vtest-socket: start virgl_test_server --no-virgl with "
                                 "VIRGL_APIR_BACKEND_LIBRARY set to the bench backend");
}

Result bench_roundtrip_vtest(const Plan& p, const std::string& socket) {
    if (socket.empty()) return vtest_skipped("roundtrip_vtest");
    auto s = vtest_session(socket);
    auto ping_batch = [&](size_t n) {
        const auto t0 = BenchClock::now();
        for (size_t i = 0; i < n; ++i)
            if (auto r = s->transport().ping(apir::Deadline::after(seconds(5))); !r)
                fatal("vtest PING", r.error());
        return ns_since(t0, BenchClock::now()) / static_cast<double>(n);
    };
    std::vector<double> call_ns, ping_ns;
    for (size_t r = 0; r < p.drm_rounds; ++r) {
        in_turn(r, {[&] { call_ns.push_back(nop_batch(*s, p.rt_warmup, p.drm_batch)); }, settle,
                    [&] { ping_ns.push_back(ping_batch(p.drm_batch)); }, settle});
    }
    const double c = median(call_ns), g = median(ping_ns);
    const auto st = s->transport().stats();
    Result res("roundtrip_vtest",
               "empty FORWARD over vtest (virglrenderer's host), median ns per call");
    res.number("ours_ns", c, 1, "empty FORWARD through virgl_test_server", "ns")
        .number("ping_ns", g, 1, "one vtest PING round trip on the same socket (the floor)", "ns")
        .integer("spin_replies", st.spin_replies)
        .integer("ping_replies", st.ping_replies)
        .integer("batches", p.drm_rounds)
        .integer("calls_per_batch", p.drm_batch)
        .target("ping", c / g, c <= 2 * g, "ours_ns <= 2 * ping_ns");
    return res;
}

Result bench_bulk_vtest(const Plan& p, const std::string& socket) {
    if (socket.empty()) return vtest_skipped("bulk_vtest");
    auto s = vtest_session(socket);
    return bulk_on(p, *s, "bulk_vtest",
                   "64 MiB guest -> virglrenderer's host through a staging blob, GB/s");
}

// ---------------------------------------------------------------------------
// codec: encode + decode of one message vs. a hand-written encoder/decoder

struct CodecMessage {
    uint32_t a = 0, b = 0, c = 0, d = 0;
    uint64_t e = 0, f = 0;
    std::array<uint8_t, 256> blob{}; // fixed-size: no prefix, decoded by copy
    static constexpr auto wire_fields =
        apir::fields(&CodecMessage::a, &CodecMessage::b, &CodecMessage::c, &CodecMessage::d,
                     &CodecMessage::e, &CodecMessage::f, &CodecMessage::blob);
    friend bool operator==(const CodecMessage&, const CodecMessage&) = default;
};

/// What one would write by hand, ggml-style: a cursor, a bounds check per field,
/// memcpy in and out; a failed check stops encoding / zeroes what it could not read.
namespace handwritten {

size_t encode(std::span<std::byte> buf, const CodecMessage& m) {
    std::byte* cur = buf.data();
    std::byte* const end = buf.data() + buf.size();
    bool ok = true;
    auto put = [&](const void* src, size_t n) {
        if (!ok || static_cast<size_t>(end - cur) < n) {
            ok = false;
            return;
        }
        std::memcpy(cur, src, n);
        cur += n;
    };
    put(&m.a, 4);
    put(&m.b, 4);
    put(&m.c, 4);
    put(&m.d, 4);
    put(&m.e, 8);
    put(&m.f, 8);
    put(m.blob.data(), m.blob.size());
    return ok ? static_cast<size_t>(cur - buf.data()) : 0;
}

bool decode(std::span<const std::byte> buf, CodecMessage& m) {
    const std::byte* cur = buf.data();
    const std::byte* const end = buf.data() + buf.size();
    bool ok = true;
    auto get = [&](void* dst, size_t n) {
        if (!ok || static_cast<size_t>(end - cur) < n) {
            ok = false;
            std::memset(dst, 0, n);
            return;
        }
        std::memcpy(dst, cur, n);
        cur += n;
    };
    get(&m.a, 4);
    get(&m.b, 4);
    get(&m.c, 4);
    get(&m.d, 4);
    get(&m.e, 8);
    get(&m.f, 8);
    get(m.blob.data(), m.blob.size());
    return ok;
}

} // namespace handwritten

// Both sides compile to nearly the same instructions; their medians agree to about
// 0.2% and move together by ~1% from run to run. "No slower" is judged within 1%.
constexpr double codec_resolution = 1.01;

/// One side of the codec measurement: n round trips of msg through buf into out;
/// nanoseconds per round trip. Both sides are compiled alone, in the same shape, so
/// that neither gains from being inlined into the caller where the other is not.
struct CodecBuffers {
    CodecMessage msg;
    // A command buffer; its size is hidden from the optimizer in the loops, as a
    // buffer's size is at run time, so that neither side's checks fold away.
    alignas(64) std::array<std::byte, 4096> buf{};
    CodecMessage out;
};

[[gnu::noinline]] double codec_ours(CodecBuffers& b, size_t n) {
    const auto t0 = BenchClock::now();
    for (size_t i = 0; i < n; ++i) {
        b.msg.a = static_cast<uint32_t>(i);
        keep(b.msg);
        apir::Encoder enc(std::span(b.buf.data(), opaque(b.buf.size())));
        enc.put(b.msg);
        if (!enc.ok()) fatal("codec: encode failed");
        keep(b.buf);
        apir::Decoder dec(enc.written());
        if (!dec.get_into(b.out)) fatal("codec: decode failed");
        keep(b.out);
    }
    return ns_since(t0, BenchClock::now()) / static_cast<double>(n);
}

[[gnu::noinline]] double codec_handwritten(CodecBuffers& b, size_t n) {
    const auto t0 = BenchClock::now();
    for (size_t i = 0; i < n; ++i) {
        b.msg.a = static_cast<uint32_t>(i);
        keep(b.msg);
        const size_t len =
            handwritten::encode(std::span(b.buf.data(), opaque(b.buf.size())), b.msg);
        if (len == 0) fatal("codec: hand-written encode failed");
        keep(b.buf);
        if (!handwritten::decode(std::span(b.buf).first(len), b.out))
            fatal("codec: hand-written decode failed");
        keep(b.out);
    }
    return ns_since(t0, BenchClock::now()) / static_cast<double>(n);
}

Result bench_codec(const Plan& p) {
    CodecBuffers b;
    b.msg = CodecMessage{1, 2, 3, 4, 5, 6, {}};
    for (size_t i = 0; i < b.msg.blob.size(); ++i)
        b.msg.blob[i] = static_cast<uint8_t>(i * 7);
    const CodecMessage& msg = b.msg;
    const CodecMessage& out = b.out;
    auto& buf = b.buf;

    std::vector<double> o, h;
    for (size_t r = 0; r < p.codec_rounds; ++r) {
        in_turn(r, {[&] {
                        o.push_back(codec_ours(b, p.codec_batch));
                        if (!(out == msg)) fatal("codec: the decoded message differs");
                    },
                    [&] {
                        h.push_back(codec_handwritten(b, p.codec_batch));
                        if (!(out == msg)) fatal("codec: the hand-written decoded message differs");
                    }});
    }
    const double mo = median(o), mh = median(h);
    apir::Encoder sizer(buf);
    sizer.put(msg);
    Result res("codec", "encode + decode of 4 x u32, 2 x u64, a 256-byte blob; median ns");
    res.number("ours_ns", mo, 2, "ours (Encoder + Decoder, bounds-checked)", "ns")
        .number("handwritten_ns", mh, 2, "reference: hand-written, bounds-checked", "ns")
        .integer("wire_bytes", sizer.size(), "message size on the wire", "bytes")
        .integer("batches", p.codec_rounds)
        .target("handwritten", mo / mh, mo <= codec_resolution * mh,
                "ours_ns <= handwritten_ns (within 1%)");
    return res;
}

// ---------------------------------------------------------------------------
// wait_cpu: what the waiting guest thread burns while the host works 1 ms

double thread_cpu_ns() {
    timespec ts{};
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return static_cast<double>(ts.tv_sec) * 1e9 + static_cast<double>(ts.tv_nsec);
}

Result bench_wait_cpu(const Plan& p, Sessions& sessions) {
    constexpr uint32_t work_us = 1000;
    struct Sample {
        Session* s;
        double cpu = 0, wall = 0;
    };
    std::array<Sample, 3> samples{
        {{&sessions.adaptive()}, {&sessions.poll15()}, {&sessions.spin()}}};
    for (auto& x : samples) // warm: channels exist, host threads awake
        take(x.s->call<bench::Work>(bench::WorkRequest{10}), "work call");
    auto measure = [&](Sample& x) {
        settle();
        const double c0 = thread_cpu_ns();
        const auto w0 = BenchClock::now();
        take(x.s->call<bench::Work>(bench::WorkRequest{work_us}), "work call");
        const auto w1 = BenchClock::now();
        x.cpu += thread_cpu_ns() - c0;
        x.wall += ns_since(w0, w1);
    };
    for (size_t i = 0; i < p.wait_calls; ++i) {
        in_turn(i, {[&] { measure(samples[0]); }, [&] { measure(samples[1]); },
                    [&] { measure(samples[2]); }});
    }
    const double ours = samples[0].cpu / samples[0].wall;
    const double calls = static_cast<double>(p.wait_calls);
    Result res("wait_cpu", "guest thread CPU time / wall time while the host works 1 ms");
    res.integer("host_work_us", work_us)
        .number("cpu_fraction", ours, 4, "ours (default adaptive wait)")
        .number("poll15_cpu_fraction", samples[1].cpu / samples[1].wall, 4,
                "fixed 15 µs poll (ggml's wait)")
        .number("spin_cpu_fraction", samples[2].cpu / samples[2].wall, 4, "spin only")
        .number("wall_us", samples[0].wall / calls / 1e3, 1, "ours: wall time per call", "µs")
        .number("cpu_us", samples[0].cpu / calls / 1e3, 1, "ours: guest CPU time per call", "µs")
        .integer("calls", p.wait_calls)
        .target("cpu", ours, ours <= 0.10, "cpu_fraction <= 0.10");
    return res;
}

// ---------------------------------------------------------------------------
// alloc: heap allocations per steady-state typed FORWARD call

Result bench_alloc(const Plan& p, Sessions& sessions) {
    Session& s = sessions.adaptive();
    auto add = [&](uint64_t i) {
        auto r = s.call<bench::Add>(bench::AddRequest{i, 1});
        if (!r) fatal("add call", r.error());
        if (r->sum != i + 1) fatal("add call: wrong sum");
    };
    for (uint64_t i = 0; i < p.alloc_warmup; ++i)
        add(i);
    const auto p0 = process_allocs();
    const auto g0 = thread_allocs();
    for (uint64_t i = 0; i < p.alloc_calls; ++i)
        add(i);
    const auto p1 = process_allocs();
    const auto g1 = thread_allocs();
    for (size_t i = 0; i < p.alloc_warmup; ++i)
        take(s.template call<bench::Nop>(apir::Empty{}), "nop call");
    const auto n0 = process_allocs();
    for (size_t i = 0; i < p.alloc_calls; ++i)
        take(s.template call<bench::Nop>(apir::Empty{}), "nop call");
    const auto n1 = process_allocs();

    const double calls = static_cast<double>(p.alloc_calls);
    const double per_call = static_cast<double>(p1.allocs - p0.allocs) / calls;
    Result res("alloc", "operator new calls per steady-state typed FORWARD (guest + host)");
    res.number("allocs_per_call", per_call, 3, "typed call (Add), whole process")
        .number("guest_allocs_per_call", static_cast<double>(g1.allocs - g0.allocs) / calls, 3,
                "typed call (Add), calling thread only")
        .number("bytes_per_call", static_cast<double>(p1.bytes - p0.bytes) / calls, 1,
                "bytes allocated per typed call")
        .number("nop_allocs_per_call", static_cast<double>(n1.allocs - n0.allocs) / calls, 3,
                "empty call, whole process")
        .integer("calls", p.alloc_calls)
        .target("zero", std::nan(""), p1.allocs == p0.allocs, "allocs_per_call == 0");
    return res;
}

// ---------------------------------------------------------------------------
// roundtrip_drm_sim: the DRM transport on the simulated device (apir::SimDevice)
//
// The same empty FORWARD as `roundtrip`, over VirtgpuTransport on the simulated
// virtio-gpu device of apir-sim (EXECBUFFER hands the command to a host thread; the
// guest polls the reply page, as it must in a VM, where the host cannot wake it),
// interleaved with the same call on a second simulated device whose guest spins until
// the reply (what the device takes, without the poll's sleeps) and with the threaded
// loopback call. For comparison only: no target.
// Built when the drm feature is on (APIR_HAVE_DRM); otherwise the line says why it was
// skipped.

#if APIR_HAVE_DRM
Result bench_roundtrip_drm_sim(const Plan& p, Sessions& sessions) {
    // One simulated device per wait policy (each with its own host thread).
    auto open_drm = [&](apir::WaitPolicy wait) {
        apir::SimConfig config;
        config.host.config[std::string(apir::config_library_path)] = sessions.backend();
        apir::VirtgpuOptions options;
        options.device = std::make_shared<apir::SimDevice>(std::move(config));
        options.capset = apir::CapsetChoice::apir;
        options.use_environment = false;
        auto t = apir::VirtgpuTransport::open(std::move(options));
        if (!t) fatal("open the DRM transport on the simulated device", t.error());
        apir::SessionOptions so;
        so.wait = wait;
        auto s = std::make_unique<apir::Session<apir::VirtgpuTransport>>(std::move(*t), so);
        take(s->connect(), "connect over the simulated device");
        return s;
    };
    auto drm = open_drm(apir::WaitPolicy::adaptive());
    auto spin = open_drm(apir::WaitPolicy::spin_only());
    Session& loop = sessions.adaptive();
    // The DRM calls are timed one by one as well (a clock read costs well under 1% of
    // one): the batch's mean hides whether every call is slow or a few very slow.
    struct Calls {
        std::vector<double> batch_ns, call_ns;
    };
    auto timed_batch = [&](apir::Session<apir::VirtgpuTransport>& s, Calls& out) {
        for (size_t i = 0; i < p.rt_warmup; ++i)
            take(s.call<bench::Nop>(apir::Empty{}), "nop call");
        double sum = 0;
        for (size_t i = 0; i < p.drm_batch; ++i) {
            const auto t0 = BenchClock::now();
            if (auto r = s.call<bench::Nop>(apir::Empty{}); !r) fatal("nop call", r.error());
            const double ns = ns_since(t0, BenchClock::now());
            out.call_ns.push_back(ns);
            sum += ns;
        }
        out.batch_ns.push_back(sum / static_cast<double>(p.drm_batch));
    };
    Calls drm_calls, spin_calls;
    std::vector<double> loop_ns;
    for (size_t r = 0; r < p.drm_rounds; ++r) {
        in_turn(r, {[&] { timed_batch(*drm, drm_calls); }, settle,
                    [&] { timed_batch(*spin, spin_calls); }, settle,
                    [&] { loop_ns.push_back(nop_batch(loop, p.rt_warmup, p.drm_batch)); }, settle});
    }
    auto quantile = [](std::vector<double> v, double q) {
        if (v.empty()) return 0.0;
        const auto k = static_cast<size_t>(q * static_cast<double>(v.size() - 1));
        std::nth_element(v.begin(), v.begin() + static_cast<long>(k), v.end());
        return v[k];
    };
    const double d = median(drm_calls.batch_ns), sp = median(spin_calls.batch_ns),
                 l = median(loop_ns);
    Result res("roundtrip_drm_sim",
               "empty FORWARD, DRM transport on the simulated device, median ns per call");
    res.number("ours_ns", d, 1, "DRM on the simulated device, default wait", "ns")
        .number("call_p50_ns", quantile(drm_calls.call_ns, 0.5), 1, "one call: median", "ns")
        .number("call_p90_ns", quantile(drm_calls.call_ns, 0.9), 1, "one call: p90", "ns")
        .number("spin_ns", sp, 1, "same, guest spins until the reply (no poll)", "ns")
        .number("spin_call_p50_ns", quantile(spin_calls.call_ns, 0.5), 1,
                "spinning, one call: median", "ns")
        .number("spin_call_p90_ns", quantile(spin_calls.call_ns, 0.9), 1, "spinning, one call: p90",
                "ns")
        .number("loopback_ns", l, 1, "threaded loopback (the roundtrip line)", "ns")
        .number("ratio", d / l, 3, "DRM sim / loopback")
        .number("over_spin", d / sp, 3, "DRM sim / DRM sim spinning")
        .integer("batches", p.drm_rounds)
        .integer("calls_per_batch", p.drm_batch);
    return res;
}
#else
Result bench_roundtrip_drm_sim(const Plan&, Sessions&) {
    return Result::skipped("roundtrip_drm_sim",
                           "built without the DRM transport (and so without the simulated "
                           "virtio-gpu device)");
}
#endif

// ---------------------------------------------------------------------------
// Crowded machines: one CPU for both halves of a call, many callers, spaced calls

/// FUTEX_WAIT while *w == expected (spurious returns are fine: callers look again).
void futex_sleep(std::atomic<uint32_t>& w, uint32_t expected) {
    syscall(SYS_futex, reinterpret_cast<uint32_t*>(&w), FUTEX_WAIT_PRIVATE, expected, nullptr,
            nullptr, 0);
}
void futex_wake(std::atomic<uint32_t>& w) {
    syscall(SYS_futex, reinterpret_cast<uint32_t*>(&w), FUTEX_WAKE_PRIVATE, 1, nullptr, nullptr, 0);
}

/// The best two threads can do without spinning: each stores the word, wakes the other
/// with a futex and sleeps until the word changes. On one CPU, the reference for a
/// guest and a host that share it.
class FutexPingPong {
public:
    FutexPingPong() : thread_([this] { serve(); }) {}
    ~FutexPingPong() {
        word_.store(quit, std::memory_order_release);
        futex_wake(word_);
        thread_.join();
    }
    FutexPingPong(const FutexPingPong&) = delete;
    FutexPingPong& operator=(const FutexPingPong&) = delete;

    /// Nanoseconds per round trip over n round trips.
    double run(size_t n) {
        const auto t0 = BenchClock::now();
        for (size_t i = 0; i < n; ++i) {
            const uint32_t ask = seq_ + 1; // odd
            word_.store(ask, std::memory_order_release);
            futex_wake(word_);
            uint32_t w = 0;
            while ((w = word_.load(std::memory_order_acquire)) == ask)
                futex_sleep(word_, ask);
            seq_ = w;
        }
        return ns_since(t0, BenchClock::now()) / static_cast<double>(n);
    }

private:
    static constexpr uint32_t quit = 0xfffffffe;
    void serve() {
        for (;;) {
            const uint32_t w = word_.load(std::memory_order_acquire);
            if (w == quit) return;
            if (w & 1) {
                word_.store(w + 1, std::memory_order_release);
                futex_wake(word_);
            } else {
                futex_sleep(word_, w);
            }
        }
    }
    alignas(64) std::atomic<uint32_t> word_{0};
    uint32_t seq_ = 0;
    std::thread thread_;
};

/// Binds the calling thread to one CPU for its lifetime; threads it creates meanwhile
/// inherit the binding. Restores the thread's CPUs when destroyed.
class PinToOneCpu {
public:
    PinToOneCpu() {
        ok_ = sched_getaffinity(0, sizeof saved_, &saved_) == 0;
        cpu_ = sched_getcpu();
        if (!ok_ || cpu_ < 0) return;
        cpu_set_t one;
        CPU_ZERO(&one);
        CPU_SET(cpu_, &one);
        ok_ = sched_setaffinity(0, sizeof one, &one) == 0;
    }
    ~PinToOneCpu() {
        if (ok_) sched_setaffinity(0, sizeof saved_, &saved_);
    }
    PinToOneCpu(const PinToOneCpu&) = delete;
    PinToOneCpu& operator=(const PinToOneCpu&) = delete;
    [[nodiscard]] bool ok() const noexcept { return ok_; }
    [[nodiscard]] int cpu() const noexcept { return cpu_; }

private:
    cpu_set_t saved_{};
    int cpu_ = -1;
    bool ok_ = false;
};

apir::CallOptions within(nanoseconds d) {
    apir::CallOptions o;
    o.deadline = apir::Deadline::after(d);
    return o;
}

Result bench_shared_cpu(const Plan& p, Sessions& sessions) {
    PinToOneCpu pin; // the session's host thread and the ping-pong's thread inherit it
    if (!pin.ok()) return Result::skipped("shared_cpu", "cannot bind this thread to one CPU");
    std::vector<double> ours_ns, futex_ns;
    {
        auto s = open_session(sessions.backend(), apir::LoopbackOptions::Mode::threaded);
        FutexPingPong ref;
        for (size_t r = 0; r < p.shared_rounds; ++r) {
            in_turn(r, {[&] { ours_ns.push_back(nop_batch(*s, p.rt_warmup, p.shared_batch)); },
                        [&] { futex_ns.push_back(ref.run(p.shared_batch)); }});
        }
    }
    const double o = median(ours_ns), f = median(futex_ns);
    Result res("shared_cpu", "guest and host thread bound to one CPU, median ns per call");
    res.integer("cpu", static_cast<uint64_t>(pin.cpu()), "the CPU")
        .number("ours_ns", o, 1, "ours: empty FORWARD, threaded loopback", "ns")
        .number("ours_calls_per_s", 1e9 / o, 0, "ours", "calls/s")
        .number("futex_ns", f, 1, "reference: futex ping-pong on the same CPU", "ns")
        .number("futex_trips_per_s", 1e9 / f, 0, "reference", "trips/s")
        .integer("batches", p.shared_rounds)
        .integer("calls_per_batch", p.shared_batch)
        .target("futex", f / o, o <= 2 * f, "calls/s >= 0.5 * futex trips/s");
    return res;
}

double percentile(std::vector<double> v, double q) {
    if (v.empty()) return 0;
    const auto k = static_cast<size_t>(q * static_cast<double>(v.size() - 1));
    std::nth_element(v.begin(), v.begin() + static_cast<long>(k), v.end());
    return v[k];
}

Result bench_many_callers(const Plan& p, Sessions& sessions) {
    constexpr size_t callers = 8;
    Session& s = sessions.adaptive();
    std::vector<double> one_rate, many_rate, one_lat, many_lat;
    one_lat.reserve(p.many_rounds * p.many_calls);
    many_lat.reserve(p.many_rounds * p.many_calls);
    // n threads share p.many_calls calls on one session; calls per second of the whole.
    auto run = [&](size_t n, std::vector<double>& lat) {
        const size_t per = p.many_calls / n;
        std::vector<std::vector<double>> took(n);
        for (auto& t : took)
            t.reserve(per);
        std::atomic<size_t> ready{0};
        std::atomic<bool> go{false};
        auto body = [&](size_t t) {
            ready.fetch_add(1);
            while (!go.load(std::memory_order_acquire))
                std::this_thread::yield();
            for (size_t i = 0; i < per; ++i) {
                const auto t0 = BenchClock::now();
                if (auto r = s.call<bench::Nop>(apir::Empty{}); !r) fatal("nop call", r.error());
                took[t].push_back(ns_since(t0, BenchClock::now()));
            }
        };
        std::vector<std::thread> threads;
        for (size_t t = 1; t < n; ++t)
            threads.emplace_back(body, t);
        while (ready.load() < n - 1)
            std::this_thread::yield();
        ready.fetch_add(1);
        const auto t0 = BenchClock::now();
        go.store(true, std::memory_order_release);
        body(0);
        for (auto& t : threads)
            t.join();
        const double secs = ns_since(t0, BenchClock::now()) / 1e9;
        for (auto& t : took)
            lat.insert(lat.end(), t.begin(), t.end());
        return static_cast<double>(per * n) / secs;
    };
    run(callers, many_lat); // warm: a channel per caller
    many_lat.clear();
    for (size_t r = 0; r < p.many_rounds; ++r) {
        in_turn(r, {[&] { one_rate.push_back(run(1, one_lat)); }, settle,
                    [&] { many_rate.push_back(run(callers, many_lat)); }, settle});
    }
    const double one = median(one_rate), many = median(many_rate);
    const double p50 = percentile(many_lat, 0.5), p99 = percentile(many_lat, 0.99);
    Result res("many_callers", "one session, 8 caller threads vs 1, empty FORWARD");
    res.integer("callers", callers)
        .number("one_calls_per_s", one, 0, "1 caller", "calls/s")
        .number("many_calls_per_s", many, 0, "8 callers, all together", "calls/s")
        .number("one_p50_ns", percentile(one_lat, 0.5), 0, "1 caller: p50 per call", "ns")
        .number("p50_ns", p50, 0, "8 callers: p50 per call", "ns")
        .number("p99_ns", p99, 0, "8 callers: p99 per call", "ns")
        .integer("rounds", p.many_rounds)
        .integer("calls_per_round", p.many_calls)
        .integer("cpus", std::thread::hardware_concurrency())
        .target("throughput", many / one, many >= one, "many_calls_per_s >= one_calls_per_s")
        .target("tail", p99 / p50, p99 <= 4 * p50, "p99_ns <= 4 * p50_ns");
    return res;
}

/// A thread asleep in FUTEX_WAIT that answers each wake by storing an acknowledgement:
/// what waking a sleeping host thread costs, to the moment it runs.
class SleepingThread {
public:
    SleepingThread() : thread_([this] { serve(); }) {}
    ~SleepingThread() {
        word_.store(quit, std::memory_order_release);
        futex_wake(word_);
        thread_.join();
    }
    SleepingThread(const SleepingThread&) = delete;
    SleepingThread& operator=(const SleepingThread&) = delete;

    /// Nanoseconds from the wake to the thread's acknowledgement.
    double wake() {
        const uint32_t w = ++seq_;
        const auto t0 = BenchClock::now();
        word_.store(w, std::memory_order_release);
        futex_wake(word_);
        while (ack_.load(std::memory_order_acquire) != w) {
        }
        return ns_since(t0, BenchClock::now());
    }

private:
    static constexpr uint32_t quit = 0xffffffff;
    void serve() {
        uint32_t seen = 0;
        for (;;) {
            const uint32_t w = word_.load(std::memory_order_acquire);
            if (w == quit) return;
            if (w != seen) {
                seen = w;
                ack_.store(w, std::memory_order_release);
            } else {
                futex_sleep(word_, w);
            }
        }
    }
    alignas(64) std::atomic<uint32_t> word_{0};
    alignas(64) std::atomic<uint32_t> ack_{0};
    uint32_t seq_ = 0;
    std::thread thread_;
};

Result bench_spaced(const Plan& p, Sessions& sessions) {
    constexpr auto gap = microseconds(100);
    Session& s = sessions.adaptive();
    // Sleeps of 100 µs, not 150: Linux's default timer slack is 50 µs.
    const int slack = prctl(PR_GET_TIMERSLACK, 0, 0, 0, 0);
    prctl(PR_SET_TIMERSLACK, 1, 0, 0, 0);
    SleepingThread sleeper;
    std::vector<double> spaced_ns, wake_ns, b2b_ns;
    for (size_t r = 0; r < p.spaced_rounds; ++r) {
        in_turn(r, {[&] {
                        for (size_t i = 0; i < p.spaced_calls; ++i) {
                            std::this_thread::sleep_for(gap);
                            const auto t0 = BenchClock::now();
                            take(s.call<bench::Nop>(apir::Empty{}), "nop call");
                            spaced_ns.push_back(ns_since(t0, BenchClock::now()));
                        }
                    },
                    [&] {
                        for (size_t i = 0; i < p.spaced_calls; ++i) {
                            std::this_thread::sleep_for(gap);
                            wake_ns.push_back(sleeper.wake());
                        }
                    },
                    [&] { b2b_ns.push_back(nop_batch(s, p.rt_warmup, p.rt_batch)); }, settle});
    }
    if (slack > 0) prctl(PR_SET_TIMERSLACK, static_cast<unsigned long>(slack), 0, 0, 0);
    const double sp = median(spaced_ns), w = median(wake_ns), b = median(b2b_ns);
    Result res("spaced", "an empty FORWARD 100 µs after the previous one, median ns");
    res.number("ours_ns", sp, 1, "ours: a call after 100 µs idle", "ns")
        .number("b2b_ns", b, 1, "the same call back to back", "ns")
        .number("futex_wake_ns", w, 1, "waking a thread asleep 100 µs (futex)", "ns")
        .number("p90_ns", percentile(spaced_ns, 0.9), 1, "ours: p90", "ns")
        .integer("calls", spaced_ns.size())
        .target("wake", sp / (b + w), sp <= 2 * (b + w), "ours_ns <= 2 * (b2b_ns + futex_wake_ns)");
    return res;
}

// ---------------------------------------------------------------------------
// inline: the software of a call alone (the host runs inside submit), and request size

/// A 4000-byte request (fixed size: no prefix), for the cost of moving its bytes.
struct BigRequest {
    std::array<uint8_t, 4000> bytes{};
    static constexpr auto wire_fields = apir::fields(&BigRequest::bytes);
};
using BigNop = apir::Forward<bench::cmd_nop, BigRequest>;
using SmallNop = apir::Forward<bench::cmd_nop, bench::AddRequest>; // 16 bytes

/// Nanoseconds per call of C over n calls, after `warmup` untimed ones.
template <class C>
double call_batch(Session& s, const typename C::request& req, size_t warmup, size_t n) {
    for (size_t i = 0; i < warmup; ++i)
        take(s.call<C>(req), "call");
    const auto t0 = BenchClock::now();
    for (size_t i = 0; i < n; ++i)
        if (auto r = s.call<C>(req); !r) fatal("call", r.error());
    return ns_since(t0, BenchClock::now()) / static_cast<double>(n);
}

Result bench_inline(const Plan& p, Sessions& sessions) {
    auto in = open_session(sessions.backend(), apir::LoopbackOptions::Mode::inline_host);
    Session& th = sessions.adaptive();
    const BigRequest big{};
    const bench::AddRequest small{1, 2};
    std::vector<double> nop, sm, bg, th_sm, th_bg;
    for (size_t r = 0; r < p.inline_rounds; ++r) {
        in_turn(r, {[&] { nop.push_back(nop_batch(*in, 2, p.inline_batch)); },
                    [&] { sm.push_back(call_batch<SmallNop>(*in, small, 2, p.inline_batch)); },
                    [&] { bg.push_back(call_batch<BigNop>(*in, big, 2, p.inline_batch)); }});
        if (r % 10 == 0) {
            th_sm.push_back(call_batch<SmallNop>(th, small, p.rt_warmup, p.rt_batch));
            th_bg.push_back(call_batch<BigNop>(th, big, p.rt_warmup, p.rt_batch));
        }
    }
    const double n = median(nop), a = median(sm), b = median(bg);
    const double ta = median(th_sm), tb = median(th_bg);
    Result res("inline", "a call with the host inline (no thread hand-off), median ns");
    res.number("nop_ns", n, 1, "empty FORWARD, inline host", "ns")
        .number("small_ns", a, 1, "16-byte request, inline host", "ns")
        .number("big_ns", b, 1, "4000-byte request, inline host", "ns")
        .number("big_over_small", b / a, 2, "4000 B / 16 B, inline")
        .number("threaded_small_ns", ta, 1, "16-byte request, threaded loopback", "ns")
        .number("threaded_big_ns", tb, 1, "4000-byte request, threaded loopback", "ns")
        .number("threaded_big_over_small", tb / ta, 2, "4000 B / 16 B, threaded")
        .integer("batches", p.inline_rounds)
        .integer("calls_per_batch", p.inline_batch);
    return res;
}

// ---------------------------------------------------------------------------
// memory: what stays held after large transfers; the first transfer into a new blob

struct MiBRequest {
    std::vector<uint8_t> bytes;
    static constexpr auto wire_fields = apir::fields(&MiBRequest::bytes);
};
using MiBNop = apir::Forward<bench::cmd_nop, MiBRequest>;

Result bench_memory(const Plan& p, Sessions& sessions) {
    constexpr size_t mib = size_t{1} << 20;
    // 1. Large commands: 1 MiB requests through the threaded loopback's ring.
    uint64_t ring_held = 0;
    {
        apir::SessionOptions so;
        so.command_buffer_size = mib + 4096;
        auto s = open_session(sessions.backend(), apir::LoopbackOptions::Mode::threaded, so);
        MiBRequest req;
        req.bytes.assign(mib - 64, 7); // within the host's 1 MiB command cap
        for (int i = 0; i < 8; ++i)
            take(s->call<bench::Nop>(apir::Empty{}), "nop call");
        const uint64_t heap0 = live_heap_bytes();
        const size_t shm0 = s->transport().shmem_bytes();
        for (size_t i = 0; i < p.memory_calls; ++i)
            take(s->call<MiBNop>(req, within(seconds(10))), "1 MiB call");
        for (size_t i = 0; i < 2 * p.memory_calls; ++i)
            take(s->call<bench::Nop>(apir::Empty{}), "nop call");
        const uint64_t heap1 = live_heap_bytes();
        const size_t shm1 = s->transport().shmem_bytes();
        ring_held = (heap1 > heap0 ? heap1 - heap0 : 0) + (shm1 > shm0 ? shm1 - shm0 : 0);
    }
    // 2. Staging: one 128 MiB transfer, then small ones.
    uint64_t staging_held = 0;
    constexpr size_t big = size_t{128} << 20;
    {
        auto s = open_session(sessions.backend(), apir::LoopbackOptions::Mode::threaded);
        take(s->call<bench::Nop>(apir::Empty{}), "nop call");
        const size_t shm0 = s->transport().shmem_bytes();
        {
            auto st = take(s->stage(big), "stage");
            std::memset(st.bytes().data(), 1, big);
            take(s->call<bench::Consume>(bench::BlobRange{st.res_id(), 0, big}), "consume");
        }
        for (int i = 0; i < 20; ++i) {
            auto st = take(s->stage(mib), "stage");
            std::memset(st.bytes().data(), 2, mib);
            take(s->call<bench::Consume>(bench::BlobRange{st.res_id(), 0, mib}), "consume");
        }
        const size_t shm1 = s->transport().shmem_bytes();
        staging_held = shm1 > shm0 ? shm1 - shm0 : 0;
    }
    constexpr uint64_t ring_bound = 4 * mib, staging_bound = 64 * mib;
    Result res("memory", "bytes still held after large transfers");
    res.integer("calls", p.memory_calls)
        .number("ring_held_mib", static_cast<double>(ring_held) / mib, 2,
                "held after 1 MiB commands (heap + shared memory)", "MiB")
        .number("staging_held_mib", static_cast<double>(staging_held) / mib, 2,
                "staging held after 128 MiB, then 1 MiB transfers", "MiB")
        .target("ring", std::nan(""), ring_held <= ring_bound, "ring_held_mib <= 4")
        .target("staging", std::nan(""), staging_held <= staging_bound, "staging_held_mib <= 64");
    return res;
}

Result bench_staging_cold(const Plan& p, Sessions& sessions) {
    std::vector<size_t> sizes{size_t{1} << 20, size_t{16} << 20};
    if (!p.quick) sizes.push_back(size_t{64} << 20);
    Buffer source(sizes.back());
    std::memset(source.data(), 3, sizes.back());
    Result res("staging_cold", "first transfer into a new staging blob vs a warm one");
    double worst = 1e9;
    for (size_t n : sizes) {
        // Session, connection and host thread exist and have made a call before the
        // first transfer is timed: it pays for the new blob and nothing else.
        auto s = open_session(sessions.backend(), apir::LoopbackOptions::Mode::threaded);
        struct Times {
            double stage = 0, rest = 0; // stage(); the write and the FORWARD after it
        };
        auto transfer = [&] {
            const auto t0 = BenchClock::now();
            auto st = take(s->stage(n), "stage");
            const auto t1 = BenchClock::now();
            std::memcpy(st.bytes().data(), source.data(), n);
            take(s->call<bench::Consume>(bench::BlobRange{st.res_id(), 0, n}), "consume");
            return Times{ns_since(t0, t1), ns_since(t1, BenchClock::now())};
        };
        take(s->call<bench::Nop>(apir::Empty{}), "nop call");
        const Times first = transfer();
        const double cold = first.stage + first.rest;
        double w = 1e18;
        for (int i = 0; i < 5; ++i) {
            const Times t = transfer();
            w = std::min(w, t.stage + t.rest);
        }
        const double ratio = w / cold; // cold GB/s over warm GB/s
        worst = std::min(worst, ratio);
        const size_t m = n >> 20;
        const auto bytes = static_cast<double>(n);
        res.number(fmt::format("cold_{}mib_gbps", m), bytes / cold, 2,
                   fmt::format("{} MiB: first transfer", m), "GB/s")
            .number(fmt::format("cold_{}mib_stage_us", m), first.stage / 1e3, 1,
                    fmt::format("{} MiB: first, stage() (create, pre-fault)", m), "µs")
            .number(fmt::format("cold_{}mib_after_stage_gbps", m), bytes / first.rest, 2,
                    fmt::format("{} MiB: first, write + FORWARD after it", m), "GB/s")
            .number(fmt::format("warm_{}mib_gbps", m), bytes / w, 2,
                    fmt::format("{} MiB: warm (best of 5)", m), "GB/s");
    }
    res.target("warm", worst, worst >= 0.5, "cold_gbps >= 0.5 * warm_gbps at every size");
    return res;
}

// ---------------------------------------------------------------------------

/// CPU time of the whole machine (all CPUs, /proc/stat) and of this process, to tell
/// how busy the machine was with other work while the benchmarks ran.
struct CpuClock {
    double machine_busy_s = 0, machine_total_s = 0, process_s = 0;

    static CpuClock now() {
        CpuClock c;
        if (std::FILE* f = std::fopen("/proc/stat", "r")) {
            unsigned long long v[8] = {};
            if (std::fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2],
                            &v[3], &v[4], &v[5], &v[6], &v[7]) == 8) {
                const double hz = static_cast<double>(sysconf(_SC_CLK_TCK));
                double total = 0;
                for (auto x : v)
                    total += static_cast<double>(x);
                c.machine_total_s = total / hz;
                c.machine_busy_s =
                    (total - static_cast<double>(v[3] + v[4])) / hz; // - idle, iowait
            }
            std::fclose(f);
        }
        timespec ts{};
        clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
        c.process_s = static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
        return c;
    }
    /// Share of the machine's CPU time that other processes used since `before`.
    [[nodiscard]] double others_since(const CpuClock& before) const {
        const double total = machine_total_s - before.machine_total_s;
        if (total <= 0) return std::nan("");
        const double others =
            (machine_busy_s - before.machine_busy_s) - (process_s - before.process_s);
        return std::max(0.0, others / total);
    }
};

void usage() {
    fmt::print(
        "usage: apir-bench [--json] [--quick] [--only NAME[,NAME...]] [--backend PATH]\n"
        "\n"
        "Measures apir's hot paths against references in the same process:\n"
        "  roundtrip          empty FORWARD over the threaded loopback vs. a raw\n"
        "                     two-thread ping-pong on the same two CPUs and vs.\n"
        "                     ggml's fixed 15 µs poll\n"
        "  bulk               64 MiB guest -> host through the staging blob vs. memcpy\n"
        "  codec              encode + decode of a small message vs. hand-written code\n"
        "  wait_cpu           CPU the waiting guest burns while the host works 1 ms\n"
        "  alloc              heap allocations per steady-state typed call\n"
        "  shared_cpu         guest and host bound to one CPU vs. a futex ping-pong\n"
        "  many_callers       8 callers on one session vs. 1 caller\n"
        "  spaced             a call 100 µs after the last vs. back to back + a wake\n"
        "  inline             ns per call with the host inline; 4000 B vs 16 B requests\n"
        "  memory             bytes held after large commands and staging transfers\n"
        "  staging_cold       the first transfer into a new staging blob vs. a warm one\n"
        "  roundtrip_drm_sim  the DRM transport on the simulated virtio-gpu device,\n"
        "                     default wait vs. spinning until the reply\n"
        "  roundtrip_vtest    empty FORWARD over vtest vs. a vtest PING (--vtest-socket)\n"
        "  bulk_vtest         64 MiB through virglrenderer's host vs. memcpy (--vtest-socket)\n"
        "\n"
        "options:\n"
        "  --json            one JSON object per line instead of a table\n"
        "  --quick           fewer samples (a few seconds; what CI runs)\n"
        "  --only LIST       run only these benchmarks (comma-separated)\n"
        "  --backend PATH    the bench backend library (default: {})\n"
        "  --vtest-socket P  virgl_test_server's socket for the *_vtest lines (the\n"
        "                    server loading the bench backend); without it they skip\n"
        "  -h, --help        this text\n"
        "exit codes: 0 ran (targets are reported, not enforced), 1 a call failed,\n"
        "2 bad arguments\n",
        APIR_BENCH_BACKEND_PATH);
}

int run(int argc, char** argv) {
    bool json = false, quick = false;
    std::string only;
    std::string backend = APIR_BENCH_BACKEND_PATH;
    std::string vtest_socket;
    for (int i = 1; i < argc; ++i) {
        const std::string_view a = argv[i];
        auto value = [&]() -> std::string {
            if (i + 1 >= argc) {
                fmt::print(stderr, "apir-bench: {} needs a value\n", a);
                std::exit(2);
            }
            return argv[++i];
        };
        if (a == "-h" || a == "--help") {
            usage();
            return 0;
        } else if (a == "--json") {
            json = true;
        } else if (a == "--quick") {
            quick = true;
        } else if (a == "--only") {
            only = "," + value() + ",";
        } else if (a == "--backend") {
            backend = value();
        } else if (a == "--vtest-socket") {
            vtest_socket = value();
        } else {
            fmt::print(stderr, "apir-bench: unknown option '{}' (try --help)\n", a);
            return 2;
        }
    }
    const Plan plan = quick ? Plan::quick_plan() : Plan{};
    Sessions sessions(backend);

    const std::array<std::pair<std::string_view, std::function<Result()>>, 14> benches{{
        {"roundtrip", [&] { return bench_roundtrip(plan, sessions); }},
        {"shared_cpu", [&] { return bench_shared_cpu(plan, sessions); }},
        {"many_callers", [&] { return bench_many_callers(plan, sessions); }},
        {"spaced", [&] { return bench_spaced(plan, sessions); }},
        {"inline", [&] { return bench_inline(plan, sessions); }},
        {"bulk", [&] { return bench_bulk(plan, sessions); }},
        {"codec", [&] { return bench_codec(plan); }},
        {"wait_cpu", [&] { return bench_wait_cpu(plan, sessions); }},
        {"alloc", [&] { return bench_alloc(plan, sessions); }},
        {"memory", [&] { return bench_memory(plan, sessions); }},
        {"staging_cold", [&] { return bench_staging_cold(plan, sessions); }},
        {"roundtrip_drm_sim", [&] { return bench_roundtrip_drm_sim(plan, sessions); }},
        {"roundtrip_vtest", [&] { return bench_roundtrip_vtest(plan, vtest_socket); }},
        {"bulk_vtest", [&] { return bench_bulk_vtest(plan, vtest_socket); }},
    }};
    if (!only.empty()) {
        for (size_t pos = 1; pos < only.size();) {
            const size_t next = only.find(',', pos);
            const std::string_view name(only.data() + pos, next - pos);
            const bool known = std::any_of(benches.begin(), benches.end(),
                                           [&](const auto& b) { return b.first == name; });
            if (!name.empty() && !known) {
                fmt::print(stderr, "apir-bench: no benchmark named '{}' (try --help)\n", name);
                return 2;
            }
            pos = next + 1;
        }
    }
    if (!json)
        fmt::print("apir-bench: {} run, {} CPUs; ours and reference in interleaved batches\n\n",
                   quick ? "quick" : "full", std::thread::hardware_concurrency());
    const auto cpu0 = CpuClock::now();
    for (const auto& [name, bench] : benches) {
        if (!only.empty() && only.find("," + std::string(name) + ",") == std::string::npos)
            continue;
        const Result r = bench();
        fmt::print("{}\n", json ? r.json() : r.table());
        std::fflush(stdout);
    }
    if (!json)
        fmt::print("other processes used {:.0f}% of the machine's CPU time during the run "
                   "(figures are trustworthy near 0%)\n",
                   100 * CpuClock::now().others_since(cpu0));
    return 0;
}

} // namespace
} // namespace apir_bench

int main(int argc, char** argv) {
    return apir_bench::run(argc, argv);
}
