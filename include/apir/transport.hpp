// The Transport concept and AnyTransport, a transport chosen at run time.
//
// A transport moves one APIR call: the guest creates host-visible shared memory
// (a resource id plus a mapping: apir/shmem.hpp), writes 0 into the notification word
// of a reply page (apir/reply_page.hpp), submits a command buffer naming that page, and
// waits (apir/wait.hpp) until the host stores (return code + 1) into the word, or the
// deadline (apir/deadline.hpp). These are separate steps so that the loopback, the
// virtio-gpu DRM and the vtest transport satisfy the same concept:
//
//     template <apir::Transport T>
//     apir::Expected<uint32_t> ping(T& t, apir::Shmem& page, std::span<const std::byte> cmd) {
//         apir::reset_notification(page);
//         const auto deadline = apir::Deadline::after(std::chrono::seconds(2));
//         APIR_TRY(t.submit(cmd, page.res_id(), deadline));
//         return t.wait_reply(page, apir::WaitPolicy{}, deadline);
//     }
#pragma once

#include "apir/deadline.hpp"
#include "apir/error.hpp"
#include "apir/protocol.hpp"
#include "apir/shmem.hpp"
#include "apir/wait.hpp"

#include <concepts>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

namespace apir {

/// What a transport can say about a failed call beyond its return code, where it sees
/// the other side (a loopback link's peer knows why its LOADLIBRARY failed). Optional:
/// a transport offers it through `TransportDiagnostics* diagnostics()`, and a Session
/// appends what it says to the error of a failed call.
class TransportDiagnostics {
public:
    /// A note on the failed call of this command type (its error in hand), or empty.
    [[nodiscard]] virtual std::string explain(CommandType type, const Error& error) = 0;

protected:
    ~TransportDiagnostics() = default;
};

/// Whether T offers diagnostics (TransportDiagnostics* diagnostics()).
template <class T>
concept HasDiagnostics = requires(T& t) {
    { t.diagnostics() } -> std::same_as<TransportDiagnostics*>;
};

/// Whether T's create_shmem also takes a deadline (on the steady clock): a transport whose
/// blob creation can wait for the host (vtest's, behind the answers the server owes).
/// Without it, a caller's deadline does not reach create_shmem.
template <class T>
concept HasShmemDeadline = requires(T& t, size_t n, Deadline deadline) {
    { t.create_shmem(n, deadline) } -> std::same_as<Expected<Shmem>>;
};

/// A transport: creates shared memory, submits command buffers, waits for replies.
template <class T>
concept Transport = requires(T& t, const T& ct, size_t n, std::span<const std::byte> cmd,
                             uint32_t reply_res_id, const Shmem& page, const WaitPolicy& policy,
                             Deadline deadline) {
    /// Host-visible shared memory of at least n bytes (rounded to 16 KiB).
    { t.create_shmem(n) } -> std::same_as<Expected<Shmem>>;
    /// Hands one command buffer to the host (the bytes are copied before returning,
    /// once). reply_res_id is the reply page the command names (its header's third
    /// word, as the caller encoded it: a transport never parses it back out of the
    /// bytes); 0 for a command without one. Where the host's queue can be full, waits
    /// for room at most until the deadline (then TIMEOUT: the command was not sent); a
    /// transport whose submission never blocks (DRM's EXECBUFFER) ignores it.
    { t.submit(cmd, reply_res_id, deadline) } -> std::same_as<Expected<void>>;
    /// Waits for the reply notification of a page; returns the return code.
    { t.wait_reply(page, policy, deadline) } -> std::same_as<Expected<uint32_t>>;
    /// Added to the command type on the wire (0, or 331 in Venus transition mode).
    { ct.command_type_offset() } -> std::same_as<int32_t>;
    { ct.name() } -> std::convertible_to<std::string_view>;
};

namespace detail {

/// A transport's functions behind pointers: how the compiled call path (the session's
/// CallCore) reaches any transport type, and what AnyTransport holds.
struct TransportOps {
    void* self = nullptr;
    /// The deadline is on the steady clock; a transport without HasShmemDeadline ignores it.
    Expected<Shmem> (*create_shmem)(void* self, size_t n, Deadline deadline) = nullptr;
    Expected<void> (*submit)(void* self, std::span<const std::byte> cmd, uint32_t reply_res_id,
                             Deadline deadline) = nullptr;
    Expected<uint32_t> (*wait_reply)(void* self, const Shmem& page, const WaitPolicy& policy,
                                     Deadline deadline) = nullptr;
    TransportDiagnostics* (*diagnostics)(void* self) = nullptr; // null: it has none
    std::string_view (*name)(const void* self) = nullptr;
    int32_t command_type_offset = 0;

    template <Transport T>
    static TransportOps of(T& t) {
        TransportOps o;
        o.self = &t;
        o.create_shmem = [](void* x, size_t n, Deadline d) {
            if constexpr (HasShmemDeadline<T>)
                return static_cast<T*>(x)->create_shmem(n, d);
            else
                return static_cast<T*>(x)->create_shmem(n);
        };
        o.submit = [](void* x, std::span<const std::byte> cmd, uint32_t reply, Deadline d) {
            return static_cast<T*>(x)->submit(cmd, reply, d);
        };
        o.wait_reply = [](void* x, const Shmem& page, const WaitPolicy& p, Deadline d) {
            return static_cast<T*>(x)->wait_reply(page, p, d);
        };
        if constexpr (HasDiagnostics<T>)
            o.diagnostics = [](void* x) { return static_cast<T*>(x)->diagnostics(); };
        o.name = [](const void* x) { return std::string_view(static_cast<const T*>(x)->name()); };
        o.command_type_offset = t.command_type_offset();
        return o;
    }
};

} // namespace detail

/// A transport chosen at run time. Itself a Transport.
///
///     apir::AnyTransport t = use_vm ? apir::AnyTransport(std::move(drm))
///                                   : apir::AnyTransport(apir::LoopbackTransport(opts));
class AnyTransport {
public:
    template <Transport T>
    requires(!std::same_as<std::remove_cvref_t<T>, AnyTransport>) AnyTransport(T t)
        : AnyTransport(std::make_unique<T>(std::move(t))) {}
    /// Takes ownership of a transport that is not movable (null: a moved-from one).
    template <Transport T>
    explicit AnyTransport(std::unique_ptr<T> t)
        : ops_(t ? detail::TransportOps::of(*t) : detail::TransportOps{}),
          held_(t.release(), [](void* x) { delete static_cast<T*>(x); }) {}

    AnyTransport(AnyTransport&& o) noexcept
        : ops_(std::exchange(o.ops_, {})), held_(std::move(o.held_)) {}
    AnyTransport& operator=(AnyTransport&& o) noexcept {
        if (this != &o) {
            held_ = std::move(o.held_);
            ops_ = std::exchange(o.ops_, {});
        }
        return *this;
    }

    // A moved-from AnyTransport fails every call with DISCONNECTED.
    [[nodiscard]] Expected<Shmem> create_shmem(size_t n) {
        return create_shmem(n, Deadline::never());
    }
    /// The same, until a deadline (steady clock) where the held transport takes one.
    [[nodiscard]] Expected<Shmem> create_shmem(size_t n, Deadline d) {
        if (!held_) return moved_from();
        return ops_.create_shmem(ops_.self, n, d);
    }
    [[nodiscard]] Expected<void> submit(std::span<const std::byte> cmd, uint32_t reply_res_id,
                                        Deadline d) {
        if (!held_) return moved_from();
        return ops_.submit(ops_.self, cmd, reply_res_id, d);
    }
    [[nodiscard]] Expected<uint32_t> wait_reply(const Shmem& page, const WaitPolicy& p,
                                                Deadline d) {
        if (!held_) return moved_from();
        return ops_.wait_reply(ops_.self, page, p, d);
    }
    [[nodiscard]] int32_t command_type_offset() const { return ops_.command_type_offset; }
    [[nodiscard]] std::string_view name() const {
        return held_ ? ops_.name(ops_.self) : "moved-from";
    }
    /// The held transport's diagnostics where it offers them, else null.
    [[nodiscard]] TransportDiagnostics* diagnostics() {
        return held_ && ops_.diagnostics ? ops_.diagnostics(ops_.self) : nullptr;
    }

private:
    static Unexpected moved_from() {
        return fail(Errc::disconnected, "the transport was moved from");
    }

    detail::TransportOps ops_;                    // self: the held transport
    std::unique_ptr<void, void (*)(void*)> held_; // owns it
};

static_assert(Transport<AnyTransport> && HasDiagnostics<AnyTransport> &&
              HasShmemDeadline<AnyTransport>);

} // namespace apir
