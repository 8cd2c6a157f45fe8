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

#include <sched.h>
#include <sys/mman.h>
#include <unistd.h>

#if APIR_BENCH_DRM_SIM
#include <apir/sim_device.hpp>
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

    static Plan quick_plan() {
        Plan p;
        p.quick = true;
        p.rt_rounds = 200;
        p.bulk_reps = 4;
        p.codec_rounds = 200;
        p.wait_calls = 40;
        p.alloc_calls = 2000;
        p.drm_rounds = 30;
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
    /// are bound to two different CPUs (on a busy machine the scheduler may otherwise
    /// wake the second thread beside the first, and the ping-pong measures time slices).
    double run(size_t warmup, size_t n) {
        cpu_set_t mine;
        const bool bound = sched_getaffinity(0, sizeof mine, &mine) == 0 && pick_cpus(mine);
        if (bound) bind_to(here_);
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

    // This thread's CPU and another one it may run on; false with a single CPU.
    bool pick_cpus(const cpu_set_t& allowed) {
        here_ = sched_getcpu();
        for (int c = 0; c < CPU_SETSIZE; ++c) {
            if (c != here_ && CPU_ISSET(c, &allowed)) {
                there_.store(c, std::memory_order_relaxed);
                return here_ >= 0;
            }
        }
        there_.store(-1, std::memory_order_relaxed);
        return false;
    }
    static void bind_to(int cpu) {
        cpu_set_t one;
        CPU_ZERO(&one);
        CPU_SET(cpu, &one);
        sched_setaffinity(0, sizeof one, &one);
    }

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
    int here_ = -1;              // the guest's CPU during a batch
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
    PingPong spin;
    std::vector<double> ours_ns, spin_ns, poll_ns;
    for (size_t r = 0; r < p.rt_rounds; ++r) {
        in_turn(r, {[&] { ours_ns.push_back(nop_batch(ours, p.rt_warmup, p.rt_batch)); }, settle,
                    [&] { spin_ns.push_back(spin.run(p.rt_warmup, p.rt_batch)); }, settle,
                    [&] { poll_ns.push_back(nop_batch(poll, 2, p.rt_poll_batch)); }, settle});
    }
    const double o = median(ours_ns), s = median(spin_ns), q = median(poll_ns);
    // Two threads that each have a CPU pass the word back in well under a microsecond.
    // A slower ping-pong means they shared one CPU (a busy machine): no limit to judge by.
    const bool limit_valid = s < 10'000;
    Result res("roundtrip", "empty FORWARD over the threaded loopback, median ns per call");
    res.number("ours_ns", o, 1, "ours (default adaptive wait)", "ns")
        .number("spin_limit_ns", s, 1, "spin limit (two-thread atomic ping-pong)", "ns")
        .number("poll15_ns", q, 1, "same call, fixed 15 µs poll (ggml's wait)", "ns")
        .integer("batches", p.rt_rounds)
        .integer("calls_per_batch", p.rt_batch)
        .flag("spin_limit_valid", limit_valid, "ping-pong threads had a CPU each")
        .target("spin_limit", o / s, limit_valid && o <= 2 * s, "ours_ns <= 2 * spin_limit_ns")
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

Result bench_bulk(const Plan& p, Sessions& sessions) {
    constexpr size_t bytes = size_t{64} << 20;
    Session& s = sessions.adaptive();
    Buffer source(bytes), ref_dst(bytes), ref_tensor(bytes);
    for (size_t i = 0; i < bytes / 8; ++i) {
        const uint64_t w = i * 0x9e3779b97f4a7c15ull;
        std::memcpy(source.data() + i * 8, &w, 8);
    }
    bench::RangeEnds want;
    std::memcpy(&want.first, source.data(), 8);
    std::memcpy(&want.last, source.data() + bytes - 8, 8);
    take(s.call<bench::AllocTensor>(bench::AllocTensorRequest{bytes}), "alloc_tensor");

    // Ours: the guest writes the bytes into the reused staging blob (the one copy),
    // then one FORWARD names the blob. consume: the host reads the range in place;
    // set_tensor: the host also copies it into its tensor, as ggml's CPU buffer does.
    auto transfer = [&](bool set_tensor) {
        const auto t0 = BenchClock::now();
        auto staged = take(s.stage(bytes), "stage");
        std::memcpy(staged.bytes().data(), source.data(), bytes);
        const bench::BlobRange range{staged.res_id(), 0, bytes};
        auto r = set_tensor ? s.call<bench::SetTensor>(range) : s.call<bench::Consume>(range);
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
    Result res("bulk", "64 MiB guest -> host through the staging blob, best of the reps, GB/s");
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
// interleaved with the threaded loopback call. For comparison only: no target.
// Built when the drm feature is on (APIR_BENCH_DRM_SIM); otherwise the line says why it was
// skipped.

#if APIR_BENCH_DRM_SIM
Result bench_roundtrip_drm_sim(const Plan& p, Sessions& sessions) {
    apir::SimConfig config;
    config.host.config[std::string(apir::config_library_path)] = sessions.backend();
    apir::VirtgpuOptions options;
    options.device = std::make_shared<apir::SimDevice>(std::move(config));
    options.capset = apir::CapsetChoice::apir;
    options.use_environment = false;
    auto t = apir::VirtgpuTransport::open(std::move(options));
    if (!t) fatal("open the DRM transport on the simulated device", t.error());
    apir::Session<apir::VirtgpuTransport> drm(std::move(*t));
    take(drm.connect(), "connect over the simulated device");
    Session& loop = sessions.adaptive();
    std::vector<double> drm_ns, loop_ns;
    for (size_t r = 0; r < p.drm_rounds; ++r) {
        in_turn(r, {[&] { drm_ns.push_back(nop_batch(drm, p.rt_warmup, p.drm_batch)); }, settle,
                    [&] { loop_ns.push_back(nop_batch(loop, p.rt_warmup, p.drm_batch)); }, settle});
    }
    const double d = median(drm_ns), l = median(loop_ns);
    Result res("roundtrip_drm_sim",
               "empty FORWARD, DRM transport on the simulated device, median ns per call");
    res.number("ours_ns", d, 1, "DRM transport, simulated virtio-gpu device", "ns")
        .number("loopback_ns", l, 1, "threaded loopback (the roundtrip line)", "ns")
        .number("ratio", d / l, 3, "DRM sim / loopback")
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
    fmt::print("usage: apir-bench [--json] [--quick] [--only NAME[,NAME...]] [--backend PATH]\n"
               "\n"
               "Measures apir's hot paths against references in the same process:\n"
               "  roundtrip          empty FORWARD over the threaded loopback vs. a raw\n"
               "                     two-thread ping-pong and vs. ggml's fixed 15 µs poll\n"
               "  bulk               64 MiB guest -> host through the staging blob vs. memcpy\n"
               "  codec              encode + decode of a small message vs. hand-written code\n"
               "  wait_cpu           CPU the waiting guest burns while the host works 1 ms\n"
               "  alloc              heap allocations per steady-state typed call\n"
               "  roundtrip_drm_sim  the DRM transport on the simulated virtio-gpu device\n"
               "\n"
               "options:\n"
               "  --json            one JSON object per line instead of a table\n"
               "  --quick           fewer samples (a few seconds; what CI runs)\n"
               "  --only LIST       run only these benchmarks (comma-separated)\n"
               "  --backend PATH    the bench backend library (default: {})\n"
               "  -h, --help        this text\n"
               "exit codes: 0 ran (targets are reported, not enforced), 1 a call failed,\n"
               "2 bad arguments\n",
               APIR_BENCH_BACKEND_PATH);
}

int run(int argc, char** argv) {
    bool json = false, quick = false;
    std::string only;
    std::string backend = APIR_BENCH_BACKEND_PATH;
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
        } else {
            fmt::print(stderr, "apir-bench: unknown option '{}' (try --help)\n", a);
            return 2;
        }
    }
    const Plan plan = quick ? Plan::quick_plan() : Plan{};
    Sessions sessions(backend);

    const std::array<std::pair<std::string_view, std::function<Result()>>, 6> benches{{
        {"roundtrip", [&] { return bench_roundtrip(plan, sessions); }},
        {"bulk", [&] { return bench_bulk(plan, sessions); }},
        {"codec", [&] { return bench_codec(plan); }},
        {"wait_cpu", [&] { return bench_wait_cpu(plan, sessions); }},
        {"alloc", [&] { return bench_alloc(plan, sessions); }},
        {"roundtrip_drm_sim", [&] { return bench_roundtrip_drm_sim(plan, sessions); }},
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
