// Session: handshake, load the backend library, then typed calls from any thread.
//
//     apir::Session s(apir::LoopbackTransport(opts));        // any Transport
//     if (auto c = s.connect(); !c) return fail(c.error());  // handshake + LOADLIBRARY
//     auto sum = s.call<Add>(AddRequest{2, 3});               // Expected<AddReply>
//
// Each in-flight call has its own reply page and command buffer, taken from a pool,
// so threads never share a reply. The steady-state call path allocates nothing.
// Session<T> is a thin template: it encodes the request into the channel's command
// buffer and decodes the reply; the call between (channel, submit, wait, retire,
// counters) is compiled once in the library (detail::CallCore).
#pragma once

#include "apir/call.hpp"
#include "apir/detail/session_core.hpp"
#include "apir/log.hpp"
#include "apir/reply_page.hpp"
#include "apir/session_options.hpp"
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
        : transport_(std::move(transport)),
          core_(detail::TransportOps::of(transport_), std::move(options)) {}
    /// Precondition: no call is in flight on another thread and no Staging is alive
    /// (debug builds stop with a message otherwise).
    ~Session() {
#ifndef NDEBUG
        if (const auto n = core_.in_flight().load()) misuse(n, "call(s) still in flight");
        if (const auto n = core_.staging().held()) misuse(unsigned(n), "Staging(s) still alive");
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
        hs.deadline = after(options().handshake_timeout);
        auto reply = call<Handshake>(HandshakeRequest{}, hs);
        if (!reply) return reply;
        if (reply->major != protocol_major)
            return fail(Errc::version_mismatch,
                        fmt::format("guest speaks APIR {}.{}, host {}.{}", protocol_major,
                                    protocol_minor, reply->major, reply->minor));
        if (reply->minor != protocol_minor)
            options().logger.warn("host speaks APIR {}.{}, guest {}.{}: minor versions differ",
                                  reply->major, reply->minor, protocol_major, protocol_minor);
        {
            std::lock_guard lk(info_mu_);
            host_version_ = *reply;
        }
        if (options().load_library) {
            CallOptions ll;
            ll.deadline = after(options().load_library_timeout);
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
        } in_flight(core_.in_flight());
#endif
        const bool timed = options().time_calls || opts.duration != nullptr;
        const auto start = timed ? options().wait.time().now() : Clock::time_point{};
        Deadline deadline = opts.deadline ? *opts.deadline : default_deadline<C>();
        auto result = call_impl<C>(request, deadline);
        std::chrono::nanoseconds took{0};
        if (timed) {
            took = options().wait.time().now() - start;
            if (opts.duration) *opts.duration = took;
        }
        core_.counters().record(C::type, C::flags, took, result.has_value());
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
    /// lent until the Staging is destroyed. SessionOptions::staging_blobs are lent at
    /// once to threads that hold none; past that, stage() waits its turn (first come,
    /// first served) until `deadline`, then fails with STAGING_EXHAUSTED. A thread
    /// that already holds one (ggml's copy paths hold two) never waits: it gets
    /// another at once, up to twice staging_blobs in all, else STAGING_EXHAUSTED at
    /// once. A Staging moved to another thread still counts as its first holder's.
    [[nodiscard]] Expected<Staging> stage(size_t n, Deadline deadline) {
        auto lent = core_.lend(n, deadline);
        if (!lent) return Unexpected{std::move(lent).error()};
        return Staging(&core_.staging(), lent->index, lent->res_id, lent->bytes);
    }
    /// The same, waiting at most SessionOptions::staging_timeout.
    [[nodiscard]] Expected<Staging> stage(size_t n) {
        return stage(n, after(options().staging_timeout));
    }
    /// Copies data into a staging blob.
    [[nodiscard]] Expected<Staging> stage(Bytes data, Deadline deadline) {
        auto s = stage(data.size(), deadline);
        if (s && !data.empty()) std::memcpy(s->bytes().data(), data.data(), data.size());
        return s;
    }
    [[nodiscard]] Expected<Staging> stage(Bytes data) {
        return stage(data, after(options().staging_timeout));
    }

    [[nodiscard]] T& transport() noexcept {
        return transport_;
    }
    [[nodiscard]] const SessionOptions& options() const noexcept {
        return core_.options();
    }
    [[nodiscard]] std::optional<HandshakeReply> host_version() const {
        std::lock_guard lk(info_mu_);
        return host_version_;
    }
    /// How many times a staging blob was created (or re-created larger).
    [[nodiscard]] uint64_t staging_creates() const noexcept {
        return core_.staging().creates();
    }

    /// Counters of every command called so far.
    [[nodiscard]] std::vector<CommandStats> stats() const {
        return core_.counters().stats();
    }

    /// How many distinct FORWARD ids of 256 and above get a row of their own.
    static constexpr size_t max_forward_rows = detail::SessionCounters::max_forward_rows;

private:
    using Channel = detail::Channel;

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
            return after(options().handshake_timeout);
        else if constexpr (C::type == CommandType::load_library)
            return after(options().load_library_timeout);
        else
            return options().forward_timeout ? after(*options().forward_timeout)
                                             : Deadline::never();
    }
    // A deadline on the wait's clock (WaitPolicy::clock, the steady clock by default).
    Deadline after(std::chrono::nanoseconds d) const {
        const WaitClock* clock = options().wait.clock;
        return clock ? Deadline::after(d, *clock) : Deadline::after(d);
    }

    // The call: encode into a channel's command buffer, the compiled exchange (submit,
    // wait), then the return code's check and the decode of the reply page.
    template <class C>
    Expected<typename C::response> call_impl(const typename C::request& request,
                                             Deadline deadline) {
        auto ch = core_.begin(deadline);
        if (!ch) return Unexpected{std::move(ch).error()};
        Channel& c = **ch;
        Encoder e(core_.command_buffer(c));
        encode_command<C>(e, core_.command_type_offset(), c.page.res_id(), request);
        if (!e.ok()) {
            core_.end(c);
            return Unexpected{e.status().error()};
        }
        // Bytes of an earlier reply are never decoded as this one's (see mark_unwritten).
        constexpr size_t extent = detail::reply_extent<typename C::response>();
        uint32_t pattern = 0;
        if constexpr (extent != 0)
            pattern = detail::mark_unwritten(c, reply_payload(c.page), extent);
        auto code =
            core_.exchange(c, e.written(), deadline, core_.counters().forecast(C::type, C::flags));
        if (!code) return Unexpected{std::move(code).error()};
        Expected<typename C::response> out = typename C::response{};
        if (auto ok = C::check(*code); !ok) {
            out = Unexpected{core_.explain(C::type, std::move(ok).error())};
        } else {
            Decoder d(reply_payload(c.page), options().max_reply_alloc);
            const bool decoded = d.get_into(*out);
            Expected<void> written;
            if constexpr (extent != 0)
                written =
                    detail::check_written(reply_payload(c.page), d.consumed(), decoded, pattern);
            if (!written)
                out = Unexpected{std::move(written).error()};
            else if (!decoded)
                out = Unexpected{d.status().error()};
        }
        core_.end(c);
        return out;
    }

    T transport_;
    mutable std::mutex info_mu_;
    std::optional<HandshakeReply> host_version_; // under info_mu_
    std::atomic<bool> load_requested_{false};    // LOADLIBRARY was sent by this session
    detail::CallCore core_;                      // refers to transport_: declared after it
};

} // namespace apir
