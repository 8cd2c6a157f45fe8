// The Transport concept, shared memory, waiting policy, and AnyTransport.
//
// A transport moves one APIR call: the guest creates host-visible shared memory
// (a resource id plus a mapping), writes 0 into the notification word of a reply
// page (apir/reply_page.hpp), submits a command buffer naming that page, and waits
// until the host stores (return code + 1) into the word. These are separate steps so
// that the loopback and the virtio-gpu DRM transport satisfy the same concept:
//
//     template <apir::Transport T>
//     apir::Expected<uint32_t> ping(T& t, apir::Shmem& page, std::span<const std::byte> cmd) {
//         apir::reset_notification(page);
//         const auto deadline = apir::Deadline::after(std::chrono::seconds(2));
//         APIR_TRY(t.submit(cmd, deadline));
//         return t.wait_reply(page, apir::WaitPolicy{}, deadline);
//     }
#pragma once

#include "apir/error.hpp"
#include "apir/export.hpp"
#include "apir/protocol.hpp"

#include <atomic>
#include <chrono>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <utility>

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

/// What owns shared memory and takes it back. Implemented by the transports.
class ShmemOwner {
public:
    virtual void release_shmem(uint32_t res_id) noexcept = 0;

protected:
    ShmemOwner() : link_(std::make_shared<Link>(this)) {}
    // A copy is another owner: it gets a link of its own.
    ShmemOwner(const ShmemOwner&) : link_(std::make_shared<Link>(this)) {}
    ShmemOwner& operator=(const ShmemOwner&) noexcept { return *this; }
    ~ShmemOwner() = default;
    /// Called first by the destructor of an owner whose Shmems may outlive it: waits
    /// for a release in progress; destroying one of its Shmems later does nothing.
    void disown_shmem() noexcept {
        std::lock_guard lk(link_->mu);
        link_->owner = nullptr;
    }

private:
    friend class Shmem;
    // What a Shmem holds of its owner: the owner, until it disowns its blobs.
    struct Link {
        explicit Link(ShmemOwner* o) : owner(o) {}
        std::mutex mu;
        ShmemOwner* owner;
    };
    std::shared_ptr<Link> link_;
};

/// One host-visible shared-memory blob: its resource id and its mapping.
/// Move-only; releases the blob (unmap, close) when destroyed. It may outlive the
/// transport that created it (LoopbackTransport, VirtgpuTransport): its mapping is
/// gone with the transport, and destroying it then does nothing.
class Shmem {
public:
    Shmem() = default;
    Shmem(ShmemOwner* owner, uint32_t res_id, std::span<std::byte> bytes) noexcept
        : link_(owner ? owner->link_ : nullptr), res_id_(res_id), bytes_(bytes) {}
    Shmem(Shmem&& o) noexcept
        : link_(std::move(o.link_)), res_id_(std::exchange(o.res_id_, 0)),
          bytes_(std::exchange(o.bytes_, {})) {}
    Shmem& operator=(Shmem&& o) noexcept {
        if (this != &o) {
            reset();
            link_ = std::move(o.link_);
            res_id_ = std::exchange(o.res_id_, 0);
            bytes_ = std::exchange(o.bytes_, {});
        }
        return *this;
    }
    Shmem(const Shmem&) = delete;
    Shmem& operator=(const Shmem&) = delete;
    ~Shmem() { reset(); }

    void reset() noexcept {
        if (link_) {
            std::lock_guard lk(link_->mu);
            if (link_->owner) link_->owner->release_shmem(res_id_);
        }
        link_.reset();
        res_id_ = 0;
        bytes_ = {};
    }

    [[nodiscard]] uint32_t res_id() const noexcept { return res_id_; }
    [[nodiscard]] std::span<std::byte> bytes() const noexcept { return bytes_; }
    [[nodiscard]] size_t size() const noexcept { return bytes_.size(); }
    [[nodiscard]] std::byte* data() const noexcept { return bytes_.data(); }
    explicit operator bool() const noexcept { return link_ != nullptr; }

private:
    std::shared_ptr<ShmemOwner::Link> link_;
    uint32_t res_id_ = 0;
    std::span<std::byte> bytes_;
};

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
    /// After this much spinning, every look at the clock also yields the CPU (off by
    /// default: with a CPU hog on the machine, each yield costs a time slice).
    std::chrono::nanoseconds spin_yield_after = std::chrono::nanoseconds::max();
    /// The clock of the wait and of the Session's deadlines; null: WaitClock::system().
    const WaitClock* clock = nullptr;

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
/// (a probe), so a host that became fast again is noticed.
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
};

/// A transport: creates shared memory, submits command buffers, waits for replies.
template <class T>
concept Transport = requires(T& t, const T& ct, size_t n, std::span<const std::byte> cmd,
                             const Shmem& page, const WaitPolicy& policy, Deadline deadline) {
    /// Host-visible shared memory of at least n bytes (rounded to 16 KiB).
    { t.create_shmem(n) } -> std::same_as<Expected<Shmem>>;
    /// Hands one command buffer to the host (the bytes are copied before returning).
    /// Where the host's queue can be full, waits for room at most until the deadline
    /// (then TIMEOUT: the command was not sent); a transport whose submission never
    /// blocks (DRM's EXECBUFFER) ignores it.
    { t.submit(cmd, deadline) } -> std::same_as<Expected<void>>;
    /// Waits for the reply notification of a page; returns the return code.
    { t.wait_reply(page, policy, deadline) } -> std::same_as<Expected<uint32_t>>;
    /// Added to the command type on the wire (0, or 331 in Venus transition mode).
    { ct.command_type_offset() } -> std::same_as<int32_t>;
    { ct.name() } -> std::convertible_to<std::string_view>;
};

/// A transport chosen at run time. Itself a Transport.
///
///     apir::AnyTransport t = use_vm ? apir::AnyTransport(std::move(drm))
///                                   : apir::AnyTransport(apir::LoopbackTransport(opts));
class AnyTransport {
public:
    template <Transport T>
    requires(!std::same_as<std::remove_cvref_t<T>, AnyTransport>) AnyTransport(T t)
        : impl_(std::make_unique<Model<T>>(std::move(t))) {}
    /// Takes ownership of a transport that is not movable.
    template <Transport T>
    explicit AnyTransport(std::unique_ptr<T> t) : impl_(std::make_unique<Owned<T>>(std::move(t))) {}

    AnyTransport(AnyTransport&&) noexcept = default;
    AnyTransport& operator=(AnyTransport&&) noexcept = default;

    // A moved-from AnyTransport fails every call with DISCONNECTED.
    [[nodiscard]] Expected<Shmem> create_shmem(size_t n) {
        if (!impl_) return moved_from();
        return impl_->create_shmem(n);
    }
    [[nodiscard]] Expected<void> submit(std::span<const std::byte> cmd, Deadline d) {
        if (!impl_) return moved_from();
        return impl_->submit(cmd, d);
    }
    [[nodiscard]] Expected<uint32_t> wait_reply(const Shmem& page, const WaitPolicy& p,
                                                Deadline d) {
        if (!impl_) return moved_from();
        return impl_->wait_reply(page, p, d);
    }
    [[nodiscard]] int32_t command_type_offset() const {
        return impl_ ? impl_->command_type_offset() : 0;
    }
    [[nodiscard]] std::string_view name() const { return impl_ ? impl_->name() : "moved-from"; }
    /// The held transport's load_library_failure() where it has one, else empty.
    [[nodiscard]] std::string load_library_failure() {
        return impl_ ? impl_->load_library_failure() : std::string();
    }

private:
    static Unexpected moved_from() {
        return fail(Errc::disconnected, "the transport was moved from");
    }

    struct Concept {
        virtual ~Concept() = default;
        virtual Expected<Shmem> create_shmem(size_t n) = 0;
        virtual Expected<void> submit(std::span<const std::byte> cmd, Deadline d) = 0;
        virtual Expected<uint32_t> wait_reply(const Shmem&, const WaitPolicy&, Deadline) = 0;
        virtual int32_t command_type_offset() const = 0;
        virtual std::string_view name() const = 0;
        virtual std::string load_library_failure() = 0;
    };
    template <class T, class Holder>
    struct Forwarding : Concept {
        explicit Forwarding(Holder h) : held(std::move(h)) {}
        T& t() { return *held_ptr(); }
        const T& t() const { return *const_cast<Forwarding*>(this)->held_ptr(); }
        T* held_ptr() {
            if constexpr (std::is_same_v<Holder, T>)
                return &held;
            else
                return held.get();
        }
        Expected<Shmem> create_shmem(size_t n) override { return t().create_shmem(n); }
        Expected<void> submit(std::span<const std::byte> cmd, Deadline d) override {
            return t().submit(cmd, d);
        }
        Expected<uint32_t> wait_reply(const Shmem& p, const WaitPolicy& w, Deadline d) override {
            return t().wait_reply(p, w, d);
        }
        int32_t command_type_offset() const override { return t().command_type_offset(); }
        std::string_view name() const override { return t().name(); }
        std::string load_library_failure() override {
            if constexpr (requires(T & x) { x.load_library_failure(); })
                return t().load_library_failure();
            else
                return {};
        }
        Holder held;
    };
    template <class T>
    using Model = Forwarding<T, T>;
    template <class T>
    using Owned = Forwarding<T, std::unique_ptr<T>>;

    std::unique_ptr<Concept> impl_;
};

static_assert(Transport<AnyTransport>);

} // namespace apir
