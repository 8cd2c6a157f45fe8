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
    [[nodiscard]] Expected<void> submit(std::span<const std::byte> cmd, uint32_t reply_res_id,
                                        Deadline d) {
        if (!impl_) return moved_from();
        return impl_->submit(cmd, reply_res_id, d);
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
    /// The held transport's diagnostics where it offers them, else null.
    [[nodiscard]] TransportDiagnostics* diagnostics() {
        return impl_ ? impl_->diagnostics() : nullptr;
    }

private:
    static Unexpected moved_from() {
        return fail(Errc::disconnected, "the transport was moved from");
    }

    struct Concept {
        virtual ~Concept() = default;
        virtual Expected<Shmem> create_shmem(size_t n) = 0;
        virtual Expected<void> submit(std::span<const std::byte> cmd, uint32_t reply,
                                      Deadline d) = 0;
        virtual Expected<uint32_t> wait_reply(const Shmem&, const WaitPolicy&, Deadline) = 0;
        virtual int32_t command_type_offset() const = 0;
        virtual std::string_view name() const = 0;
        virtual TransportDiagnostics* diagnostics() = 0;
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
        Expected<void> submit(std::span<const std::byte> cmd, uint32_t reply, Deadline d) override {
            return t().submit(cmd, reply, d);
        }
        Expected<uint32_t> wait_reply(const Shmem& p, const WaitPolicy& w, Deadline d) override {
            return t().wait_reply(p, w, d);
        }
        int32_t command_type_offset() const override { return t().command_type_offset(); }
        std::string_view name() const override { return t().name(); }
        TransportDiagnostics* diagnostics() override {
            if constexpr (HasDiagnostics<T>)
                return t().diagnostics();
            else
                return nullptr;
        }
        Holder held;
    };
    template <class T>
    using Model = Forwarding<T, T>;
    template <class T>
    using Owned = Forwarding<T, std::unique_ptr<T>>;

    std::unique_ptr<Concept> impl_;
};

static_assert(Transport<AnyTransport> && HasDiagnostics<AnyTransport>);

} // namespace apir
