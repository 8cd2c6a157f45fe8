// Session: handshake, load the backend library, then typed calls from any thread.
//
//     apir::Session s(apir::LoopbackTransport(opts));        // any Transport
//     if (auto c = s.connect(); !c) return fail(c.error());  // handshake + LOADLIBRARY
//     auto sum = s.call<Add>(AddRequest{2, 3});               // Expected<AddReply>
//
// Each in-flight call has its own reply page and command buffer, taken from a pool,
// so threads never share a reply. The steady-state call path allocates nothing.
#pragma once

#include "apir/call.hpp"
#include "apir/log.hpp"
#include "apir/reply_page.hpp"
#include "apir/transport.hpp"
#include "apir/wire.hpp"

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <optional>
#include <vector>

namespace apir {

struct SessionOptions {
    std::chrono::nanoseconds handshake_timeout =
        std::chrono::milliseconds(default_handshake_timeout_ms);
    std::chrono::nanoseconds load_library_timeout =
        std::chrono::milliseconds(default_load_library_timeout_ms);
    /// Deadline of FORWARD calls; none waits forever (as ggml does).
    std::optional<std::chrono::nanoseconds> forward_timeout;
    WaitPolicy wait;
    /// Size of each command buffer (ggml uses 4 KiB); a larger request fails with
    /// ENCODE_OVERFLOW before anything is sent.
    size_t command_buffer_size = 4096;
    /// Whether connect() sends LOADLIBRARY after the handshake.
    bool load_library = true;
    /// Whether stats() carries the time calls take (total, max): two clock reads per
    /// call, more than the rest of a fast loopback call costs. Counts are always kept.
    bool time_calls = false;
    /// Cap on what one reply may make the guest allocate (strings, vectors).
    size_t max_reply_alloc = reply_page_size;
    /// Staging blobs held at once (stage()); one more fails with STAGING_EXHAUSTED.
    size_t staging_blobs = 4;
    Logger logger;
};

/// Per-call options.
struct CallOptions {
    /// Overrides the session's deadline for this call.
    std::optional<Deadline> deadline;
    /// Receives the call's duration (submit to decoded reply), if set.
    std::chrono::nanoseconds* duration = nullptr;
};

/// Counters of one command (HANDSHAKE, LOADLIBRARY, or one FORWARD id). Every FORWARD
/// id has a row of its own, up to Session::max_forward_rows distinct ids of 256 and
/// above; ids past that bound share one row marked other_ids.
struct CommandStats {
    CommandType type = CommandType::forward;
    uint32_t id = 0;
    /// The row of the FORWARD ids (>= 256) that found no row of their own; id is 0.
    bool other_ids = false;
    uint64_t calls = 0;
    uint64_t failures = 0;
    /// Time spent in the calls; zero unless SessionOptions::time_calls.
    std::chrono::nanoseconds total{0};
    std::chrono::nanoseconds max{0};
    [[nodiscard]] std::chrono::nanoseconds mean() const {
        return calls ? total / static_cast<int64_t>(calls) : std::chrono::nanoseconds{0};
    }
};

namespace detail {

/// The staging blobs of one session: at most `capacity`, reused, each lent to one
/// Staging at a time. Entries never move (the vector is reserved up front).
struct StagingPool {
    struct Entry {
        Shmem blob;
        bool held = false;
        bool tainted = false; // named by a call that timed out: never lent again
    };
    explicit StagingPool(size_t capacity) { entries.reserve(capacity); }
    void give_back(size_t i) noexcept {
        Shmem doomed; // released outside the lock
        std::lock_guard lk(mu);
        Entry& e = entries[i];
        e.held = false;
        if (e.tainted) {
            doomed = std::move(e.blob);
            e.tainted = false;
        }
    }
    // The host may still write a blob held during a call that timed out.
    void taint_held() noexcept {
        std::lock_guard lk(mu);
        for (auto& e : entries)
            if (e.held) e.tainted = true;
    }
    size_t held() {
        std::lock_guard lk(mu);
        return static_cast<size_t>(
            std::count_if(entries.begin(), entries.end(), [](const Entry& e) { return e.held; }));
    }
    std::mutex mu;
    std::vector<Entry> entries;
    std::atomic<uint64_t> creates{0};
};

} // namespace detail

/// Staged bulk data: one of the session's reused shared-memory blobs, lent until the
/// Staging is destroyed. Send res_id() in the request; the host resolves it with
/// get_shmem_ptr. Hold it until every call naming it has returned, and destroy it
/// before the session: a call that fails waiting for its reply (TIMEOUT) makes the
/// session release, never reuse, the blobs lent at that moment, since the host may
/// still be writing them.
class Staging {
public:
    Staging(Staging&& o) noexcept
        : pool_(std::exchange(o.pool_, nullptr)), index_(o.index_), res_id_(o.res_id_),
          bytes_(o.bytes_) {}
    Staging& operator=(Staging&& o) noexcept {
        if (this != &o) {
            if (pool_) pool_->give_back(index_);
            pool_ = std::exchange(o.pool_, nullptr);
            index_ = o.index_;
            res_id_ = o.res_id_;
            bytes_ = o.bytes_;
        }
        return *this;
    }
    Staging(const Staging&) = delete;
    Staging& operator=(const Staging&) = delete;
    ~Staging() {
        if (pool_) pool_->give_back(index_);
    }

    [[nodiscard]] uint32_t res_id() const noexcept { return res_id_; }
    /// Write here (zero-copy), or let Session::stage(Bytes) copy.
    [[nodiscard]] std::span<std::byte> bytes() const noexcept { return bytes_; }
    [[nodiscard]] size_t size() const noexcept { return bytes_.size(); }

private:
    template <Transport T>
    friend class Session;
    Staging(detail::StagingPool* pool, size_t index, uint32_t res_id,
            std::span<std::byte> bytes) noexcept
        : pool_(pool), index_(index), res_id_(res_id), bytes_(bytes) {}
    detail::StagingPool* pool_;
    size_t index_;
    uint32_t res_id_;
    std::span<std::byte> bytes_;
};

/// A session with one host over transport T.
///
/// Ownership: a Session is neither copyable nor movable (in-flight calls, Staging
/// objects and the counters refer to it), so it lives where it was made. Hold it by
/// std::unique_ptr (std::make_unique<apir::Session<T>>(transport, options)); a C
/// struct, such as a ggml backend's context, keeps the raw pointer and deletes it in
/// its free function. The transport inside is a movable handle: move it in, do not
/// share it between sessions.
template <Transport T>
class Session {
public:
    explicit Session(T transport, SessionOptions options = {})
        : transport_(std::move(transport)), options_(std::move(options)),
          staging_(options_.staging_blobs) {}
    /// Precondition: no call is in flight on another thread and no Staging is alive
    /// (debug builds stop with a message otherwise).
    ~Session() {
#ifndef NDEBUG
        if (const auto n = in_flight_.load()) misuse(n, "call(s) still in flight");
        if (const auto n = staging_.held()) misuse(unsigned(n), "Staging(s) still alive");
#endif
    }
    Session(const Session&) = delete;
    Session& operator=(const Session&) = delete;

    /// HANDSHAKE (a different major version is an error, a different minor version a
    /// warning), then LOADLIBRARY unless options say otherwise. May be called again,
    /// e.g. after a timeout: a session that sent LOADLIBRARY before and is told the
    /// library is already loaded (in its own context, by its own request) is connected.
    [[nodiscard]] Expected<HandshakeReply> connect() {
        CallOptions hs;
        hs.deadline = Deadline::after(options_.handshake_timeout);
        auto reply = call<Handshake>(HandshakeRequest{}, hs);
        if (!reply) return reply;
        if (reply->major != protocol_major)
            return fail(Errc::version_mismatch,
                        fmt::format("guest speaks APIR {}.{}, host {}.{}", protocol_major,
                                    protocol_minor, reply->major, reply->minor));
        if (reply->minor != protocol_minor)
            options_.logger.warn("host speaks APIR {}.{}, guest {}.{}: minor versions differ",
                                 reply->major, reply->minor, protocol_major, protocol_minor);
        {
            std::lock_guard lk(info_mu_);
            host_version_ = *reply;
        }
        if (options_.load_library) {
            CallOptions ll;
            ll.deadline = Deadline::after(options_.load_library_timeout);
            const bool asked_before = load_requested_.exchange(true);
            auto loaded = call<LoadLibrary>(Empty{}, ll);
            if (!loaded && !(asked_before && loaded.error() == Errc::load_already_loaded))
                return Unexpected{std::move(loaded).error()};
        }
        return reply;
    }

    /// Makes one typed call. Thread-safe.
    template <class C>
    [[nodiscard]] Expected<typename C::response> call(const typename C::request& request,
                                                      const CallOptions& opts = {}) {
        static_assert(
            is_call_v<C>,
            "Session::call<C>: C must be an apir::Call (e.g. apir::Forward<Id, Req, Resp>)");
        // Two clock reads cost more than the rest of a fast call: only when asked for.
#ifndef NDEBUG
        struct InFlight {
            std::atomic<uint32_t>& n;
            explicit InFlight(std::atomic<uint32_t>& c) : n(c) { n.fetch_add(1); }
            ~InFlight() { n.fetch_sub(1); }
        } in_flight(in_flight_);
#endif
        const bool timed = options_.time_calls || opts.duration != nullptr;
        const auto start = timed ? Clock::now() : Clock::time_point{};
        Deadline deadline = opts.deadline ? *opts.deadline : default_deadline<C>();
        auto result = call_impl<C>(request, deadline);
        std::chrono::nanoseconds took{0};
        if (timed) {
            took = Clock::now() - start;
            if (opts.duration) *opts.duration = took;
        }
        record(C::type, C::flags, took, result.has_value());
        return result;
    }
    /// A request of another type than the Call's: a readable compile error.
    template <class C, class Other>
    requires(!std::is_same_v<std::remove_cvref_t<Other>, typename C::request>)
        Expected<typename C::response> call(const Other&, const CallOptions& = {}) {
        static_assert(std::is_same_v<std::remove_cvref_t<Other>, typename C::request>,
                      "Session::call<C>(request): the request type does not match the Call's "
                      "request type (C::request)");
        return fail(Errc::invalid_argument);
    }

    /// A reused shared-memory blob of at least n bytes to fill in place (zero-copy),
    /// lent until the Staging is destroyed. Up to SessionOptions::staging_blobs may be
    /// held at once (ggml's copy paths hold two); one more fails at once with
    /// STAGING_EXHAUSTED, it never waits.
    [[nodiscard]] Expected<Staging> stage(size_t n) {
        std::lock_guard lk(staging_.mu);
        auto& entries = staging_.entries;
        constexpr size_t none = ~size_t{0};
        size_t fit = none, spare = none; // the smallest free blob that fits, a free slot
        for (size_t i = 0; i < entries.size(); ++i) {
            const auto& e = entries[i];
            if (e.held) continue;
            if (e.blob && e.blob.size() >= n) {
                if (fit == none || e.blob.size() < entries[fit].blob.size()) fit = i;
            } else if (spare == none) {
                spare = i;
            }
        }
        if (fit == none) {
            if (spare == none) {
                if (entries.size() >= entries.capacity())
                    return fail(Errc::staging_exhausted,
                                fmt::format("{} staging blobs are held", entries.size()));
                entries.emplace_back();
                spare = entries.size() - 1;
            }
            auto& e = entries[spare];
            e.blob.reset(); // too small: replaced
            auto blob = transport_.create_shmem(std::max(n, min_staging_size));
            if (!blob) return Unexpected{std::move(blob).error()};
            e.blob = std::move(*blob);
            staging_.creates.fetch_add(1, std::memory_order_relaxed);
            fit = spare;
        }
        auto& e = entries[fit];
        e.held = true;
        return Staging(&staging_, fit, e.blob.res_id(), e.blob.bytes().first(n));
    }
    /// Copies data into a staging blob.
    [[nodiscard]] Expected<Staging> stage(Bytes data) {
        auto s = stage(data.size());
        if (s && !data.empty()) std::memcpy(s->bytes().data(), data.data(), data.size());
        return s;
    }

    [[nodiscard]] T& transport() noexcept {
        return transport_;
    }
    [[nodiscard]] const SessionOptions& options() const noexcept {
        return options_;
    }
    [[nodiscard]] std::optional<HandshakeReply> host_version() const {
        std::lock_guard lk(info_mu_);
        return host_version_;
    }
    /// How many times a staging blob was created (or re-created larger).
    [[nodiscard]] uint64_t staging_creates() const noexcept {
        return staging_.creates.load(std::memory_order_relaxed);
    }

    /// Counters of every command called so far.
    [[nodiscard]] std::vector<CommandStats> stats() const {
        std::vector<CommandStats> out;
        for (size_t i = 0; i < slots_.size(); ++i) {
            const Slot& s = slots_[i];
            uint64_t n = s.calls.load(std::memory_order_relaxed);
            if (n == 0) continue;
            CommandStats c;
            if (i == handshake_slot) {
                c.type = CommandType::handshake;
            } else if (i == load_library_slot) {
                c.type = CommandType::load_library;
            } else {
                c.type = CommandType::forward;
                c.id = static_cast<uint32_t>(i - first_forward_slot);
            }
            if (i == overflow_slot) {
                c.id = 0;
                c.other_ids = true;
            }
            out.push_back(row(c, s, n));
        }
        // Ids of 256 and above, in the order they were first called.
        for (const auto& h : high_ids_) {
            const uint64_t key = h.key.load(std::memory_order_acquire);
            if (key == 0) break; // rows are claimed in order
            uint64_t n = h.slot.calls.load(std::memory_order_relaxed);
            if (n == 0) continue;
            CommandStats c;
            c.id = static_cast<uint32_t>(key - 1);
            out.push_back(row(c, h.slot, n));
        }
        return out;
    }

    /// How many distinct FORWARD ids of 256 and above get a row of their own.
    static constexpr size_t max_forward_rows = 64;

private:
    // A reply page and a command buffer: what one in-flight call needs.
    struct Channel {
        Shmem page;
        std::unique_ptr<std::byte[]> cmd;
    };

    struct Slot {
        std::atomic<uint64_t> calls{0}, failures{0}, total_ns{0}, max_ns{0};
    };
    // A row for one FORWARD id >= max_forward_ids: key is id + 1 once claimed, 0 before.
    struct HighSlot {
        std::atomic<uint64_t> key{0};
        Slot slot;
    };
    static constexpr size_t max_forward_ids = 256;
    static constexpr size_t handshake_slot = 0, load_library_slot = 1, first_forward_slot = 2;
    static constexpr size_t overflow_slot = first_forward_slot + max_forward_ids;
    static constexpr size_t min_staging_size = size_t{1} << 20;
    // Timed-out channels may still receive a late reply: kept aside (never released,
    // so on no transport can their page go to a new owner) until it lands. With this
    // many unanswered, the host is hopelessly behind: calls fail with HOST_BEHIND.
    static constexpr size_t max_stale = 64;

#ifndef NDEBUG
    [[noreturn]] static void misuse(unsigned n, const char* what) {
        std::fprintf(stderr,
                     "apir: Session destroyed with %u %s: destroy a Session only after every "
                     "call has returned and every Staging is gone (they would use freed "
                     "memory)\n",
                     n, what);
        std::abort();
    }
#endif

    template <class C>
    Deadline default_deadline() const {
        if constexpr (C::type == CommandType::handshake)
            return Deadline::after(options_.handshake_timeout);
        else if constexpr (C::type == CommandType::load_library)
            return Deadline::after(options_.load_library_timeout);
        else
            return options_.forward_timeout ? Deadline::after(*options_.forward_timeout)
                                            : Deadline::never();
    }

    template <class C>
    Expected<typename C::response> call_impl(const typename C::request& request,
                                             Deadline deadline) {
        auto ch = acquire();
        if (!ch) return Unexpected{std::move(ch).error()};
        Channel& c = **ch;
        Encoder e(std::span<std::byte>(c.cmd.get(), options_.command_buffer_size));
        encode_command<C>(e, transport_.command_type_offset(), c.page.res_id(), request);
        if (!e.ok()) {
            release(std::move(*ch));
            return Unexpected{e.status().error()};
        }
        reset_notification(c.page);
        if (auto s = transport_.submit(e.written(), deadline); !s) {
            release(std::move(*ch));
            return Unexpected{std::move(s).error()};
        }
        auto code = transport_.wait_reply(c.page, options_.wait, deadline);
        if (!code) {
            // The host may still answer into this page, and write the blobs the
            // request named, later: never reuse them blindly.
            retire(std::move(*ch));
            staging_.taint_held();
            return Unexpected{std::move(code).error()};
        }
        Expected<typename C::response> out = typename C::response{};
        if (auto ok = C::check(*code); !ok) {
            out = Unexpected{explain<C>(std::move(ok).error())};
        } else {
            Decoder d(reply_payload(c.page), options_.max_reply_alloc);
            if (!d.get_into(*out)) out = Unexpected{d.status().error()};
        }
        release(std::move(*ch));
        return out;
    }

    // A transport whose host runs in-process knows why LOADLIBRARY failed: the detail of
    // the error says it ("LOAD_CANNOT_OPEN: ... (dlopen: ...)").
    template <class C>
    Error explain(Error e) {
        if constexpr (C::type == CommandType::load_library &&
                      requires(T & t) { t.load_library_failure(); }) {
            std::string why = transport_.load_library_failure();
            if (!why.empty()) {
                Error out(e.code(), e.detail().empty() ? why : e.detail() + "; " + why);
                if (e.has_wire_code()) out.with_wire_code(e.wire_code());
                return out;
            }
        }
        return e;
    }

    Expected<std::unique_ptr<Channel>> acquire() {
        {
            std::lock_guard lk(pool_mu_);
            if (!free_.empty()) {
                auto c = std::move(free_.back());
                free_.pop_back();
                return c;
            }
            // A timed-out channel whose late reply has arrived is safe again.
            for (auto it = stale_.begin(); it != stale_.end(); ++it) {
                if (notification_word((*it)->page.bytes()).load(std::memory_order_acquire) != 0) {
                    auto c = std::move(*it);
                    stale_.erase(it);
                    return c;
                }
            }
            if (stale_.size() >= max_stale)
                return fail(Errc::host_behind,
                            fmt::format("{} calls timed out and the host has answered none of "
                                        "them yet",
                                        stale_.size()));
        }
        auto page = transport_.create_shmem(reply_page_size);
        if (!page) return Unexpected{std::move(page).error()};
        auto c = std::make_unique<Channel>();
        c->page = std::move(*page);
        c->cmd = std::make_unique<std::byte[]>(options_.command_buffer_size);
        std::lock_guard lk(pool_mu_);
        // Room for every channel, so release() never allocates.
        free_.reserve(++channels_);
        stale_.reserve(channels_);
        return c;
    }
    void release(std::unique_ptr<Channel> c) {
        std::lock_guard lk(pool_mu_);
        free_.push_back(std::move(c));
    }
    // A channel is created only while fewer than max_stale are stale, so they stay
    // bounded (max_stale + the caller threads) without ever releasing one.
    void retire(std::unique_ptr<Channel> c) {
        std::lock_guard lk(pool_mu_);
        stale_.push_back(std::move(c));
    }

    static CommandStats row(CommandStats c, const Slot& s, uint64_t calls) {
        c.calls = calls;
        c.failures = s.failures.load(std::memory_order_relaxed);
        c.total = std::chrono::nanoseconds(s.total_ns.load(std::memory_order_relaxed));
        c.max = std::chrono::nanoseconds(s.max_ns.load(std::memory_order_relaxed));
        return c;
    }

    // The row of a FORWARD id >= max_forward_ids: found, or claimed (lock-free, in
    // order), or the shared overflow row once all max_forward_rows are taken.
    Slot& high_slot(uint32_t id) {
        const uint64_t key = uint64_t{id} + 1;
        for (auto& h : high_ids_) {
            uint64_t seen = h.key.load(std::memory_order_acquire);
            if (seen == 0 && h.key.compare_exchange_strong(seen, key, std::memory_order_acq_rel))
                return h.slot;
            if (seen == key) return h.slot;
        }
        return slots_[overflow_slot];
    }

    void record(CommandType type, uint32_t id, std::chrono::nanoseconds took, bool ok) {
        Slot& s = type == CommandType::handshake      ? slots_[handshake_slot]
                  : type == CommandType::load_library ? slots_[load_library_slot]
                  : id < max_forward_ids              ? slots_[first_forward_slot + id]
                                                      : high_slot(id);
        const auto ns = static_cast<uint64_t>(took.count());
        s.calls.fetch_add(1, std::memory_order_relaxed);
        if (!ok) s.failures.fetch_add(1, std::memory_order_relaxed);
        if (ns == 0) return; // not timed
        s.total_ns.fetch_add(ns, std::memory_order_relaxed);
        uint64_t prev = s.max_ns.load(std::memory_order_relaxed);
        while (prev < ns && !s.max_ns.compare_exchange_weak(prev, ns, std::memory_order_relaxed)) {
        }
    }

    T transport_;
    SessionOptions options_;
    mutable std::mutex info_mu_;
    std::optional<HandshakeReply> host_version_; // under info_mu_
    std::atomic<bool> load_requested_{false};    // LOADLIBRARY was sent by this session
#ifndef NDEBUG
    std::atomic<uint32_t> in_flight_{0};
#endif

    std::mutex pool_mu_;
    std::vector<std::unique_ptr<Channel>> free_;
    std::vector<std::unique_ptr<Channel>> stale_;
    size_t channels_ = 0;

    detail::StagingPool staging_;

    std::array<Slot, overflow_slot + 1> slots_{};
    std::array<HighSlot, max_forward_rows> high_ids_{};
};

} // namespace apir
