// A backend library's umbrella header: the C ABI (backend_abi.h), the wire codec and the
// protocol's codes, and the kit for writing the backend in C++ (the host side of a call):
// a registry of per-context state, a dispatch table binding each call type to its handler,
// named return codes, the shared-memory range checks.
//
//     using Contexts = apir::ContextRegistry<MyState>;
//     Contexts g_contexts;
//     // The guest's call type: using Add = apir::Forward<cmd_add, AddRequest, AddReply>;
//     apir::Answer<AddReply> add(Contexts::Context&, const AddRequest& req) {
//         if (req.a < 0) return apir::Refusal{my_negative};
//         return AddReply{req.a + req.b}; // the table encodes and finishes the reply
//     }
//     constexpr auto g_table = [] {
//         apir::DispatchTable<Contexts::Context, 1> t(
//             {.reply_overflow = 4, .no_context = 5, .bad_request = 1, .failed = 7});
//         t.on<Add, &add>();
//         return t;
//     }();
//     APIR_BACKEND_CONTEXT_ENTRY_POINTS(g_contexts) // initialize, deinit, set_shmem_sized
//     APIR_BACKEND_DISPATCHER(g_contexts, g_table)
//
// A handler that reads or writes the frame itself (raw bytes, a layout with no wire type)
// is `uint32_t (Context&, BackendFrame&)`, bound with t.on(id, &handler).
#pragma once

#include "apir/backend_abi.h"
#include "apir/call.hpp"
#include "apir/protocol.hpp"
#include "apir/wire.hpp"

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <span>
#include <type_traits>
#include <unordered_map>
#include <utility>

namespace apir {

/// The dispatcher's regions as a Decoder over the request and an Encoder over the reply.
class BackendFrame {
public:
    BackendFrame(const char* dec_cur, const char* dec_end, char* enc_cur, const char* enc_end,
                 char** enc_cur_after) noexcept
        : dec_(std::span<const std::byte>(
              reinterpret_cast<const std::byte*>(dec_cur),
              dec_end >= dec_cur ? static_cast<size_t>(dec_end - dec_cur) : 0)),
          enc_(std::span<std::byte>(reinterpret_cast<std::byte*>(enc_cur),
                                    enc_end >= enc_cur ? static_cast<size_t>(enc_end - enc_cur)
                                                       : 0)),
          enc_cur_(enc_cur), enc_cur_after_(enc_cur_after) {
        *enc_cur_after_ = enc_cur_; // nothing written yet
    }

    [[nodiscard]] Decoder& request() noexcept { return dec_; }
    [[nodiscard]] Encoder& reply() noexcept { return enc_; }

    /// What a typed handler's thunk reports to its table, beside the handler's result.
    enum class Outcome : uint8_t { handled, bad_request, failed };
    void set_outcome(Outcome o) noexcept { outcome_ = o; }
    [[nodiscard]] Outcome outcome() const noexcept { return outcome_; }

    /// Reports the end of the reply and returns 0, or overflow_code (reporting an
    /// empty reply) when the reply did not fit its region.
    [[nodiscard]] uint32_t finish(uint32_t overflow_code) noexcept {
        if (!enc_.ok()) return overflow_code;
        *enc_cur_after_ = enc_cur_ + enc_.size();
        return 0;
    }

private:
    Decoder dec_;
    Encoder enc_;
    char* enc_cur_;
    char** enc_cur_after_;
    Outcome outcome_ = Outcome::handled;
};

/// The end of a blob range a backend accepts when the host offered no sized look-up
/// (the standard ABI's get_shmem_ptr gives no size): the backend cannot know a blob's
/// size then, so it trusts ranges up to its own documented limit. The demo and bench
/// backends use this one.
inline constexpr uint64_t default_unsized_range_limit = uint64_t{64} << 20;

/// How a backend finds the blob ranges requests name: the host's sized look-up where
/// it offered one (this project's apir_backend_set_shmem_sized), which checks a range
/// against the blob's real size; otherwise the standard get_shmem_ptr, which checks
/// that the resource exists, with the range's end bounded by unsized_limit.
struct ShmemResolver {
    apir_get_shmem_sized_fn sized = nullptr;
    void* (*unsized)(uint32_t ctx_id, uint32_t res_id) = nullptr; ///< callbacks->get_shmem_ptr
    uint64_t unsized_limit = default_unsized_range_limit;
};

/// [offset, offset + size) of shared-memory resource res_id, or an empty span when the
/// resource is unknown or the range does not lie inside it (sized look-up) or inside
/// the backend's limit (get_shmem_ptr alone), or the host offered no look-up at all.
[[nodiscard]] inline std::span<std::byte> resolve_shmem_range(const ShmemResolver& r,
                                                              uint32_t ctx_id, uint32_t res_id,
                                                              uint64_t offset,
                                                              uint64_t size) noexcept {
    uint64_t blob_size = 0;
    void* p = nullptr;
    if (r.sized) {
        p = r.sized(ctx_id, res_id, &blob_size);
    } else if (r.unsized) {
        p = r.unsized(ctx_id, res_id);
        blob_size = r.unsized_limit;
    }
    if (!p || offset > blob_size || size > blob_size - offset) return {};
    return {static_cast<std::byte*>(p) + offset, static_cast<size_t>(size)};
}

/// What apir_backend_initialize returns for the backend's own initialization code:
/// LoadLibraryCode::base_index + code (backend_init_ok, 6, is success).
[[nodiscard]] constexpr uint32_t backend_init_result(BackendInitCode code) noexcept {
    return static_cast<uint32_t>(LoadLibraryCode::base_index) + static_cast<uint32_t>(code);
}
inline constexpr uint32_t backend_init_ok = backend_init_result(BackendInitCode::success);
inline constexpr uint32_t backend_init_failed =
    backend_init_result(BackendInitCode::backend_failed);
static_assert(backend_init_ok == APIR_BACKEND_INIT_OK &&
              backend_init_failed == APIR_BACKEND_INIT_FAILED &&
              forward_invalid_index == APIR_FORWARD_INVALID_INDEX);

/// A backend's per-context state: one Context for each context id the host opens,
/// holding the host's callbacks, its shared-memory look-ups and the backend's State.
/// The entry points map onto it one to one; APIR_BACKEND_CONTEXT_ENTRY_POINTS(registry)
/// defines apir_backend_set_shmem_sized, apir_backend_initialize and apir_backend_deinit
/// so. A State with a member `template <class C> bool open(C& context)` is asked at
/// initialize (false: the backend failed), e.g. to read its configuration.
///
/// Thread-safe. A Context found stays where it is until its context is closed: the host
/// calls one context's entry points one at a time, so a dispatcher may use it unlocked.
template <class State>
class ContextRegistry {
public:
    struct Context {
        uint32_t id = 0;
        virgl_apir_callbacks* callbacks = nullptr;
        /// The host's sized look-up where it offered one, else get_shmem_ptr.
        ShmemResolver shmem;
        State state{};

        /// [offset, offset + size) of blob res_id, checked (resolve_shmem_range), or empty.
        [[nodiscard]] std::span<std::byte> resolve(uint32_t res_id, uint64_t offset,
                                                   uint64_t size) const noexcept {
            return resolve_shmem_range(shmem, id, res_id, offset, size);
        }
        /// A host configuration value, or null.
        [[nodiscard]] const char* config(const char* key) const noexcept {
            return callbacks && callbacks->get_config ? callbacks->get_config(id, key) : nullptr;
        }
    };

    /// apir_backend_set_shmem_sized: the host offers the sized look-up (before initialize).
    void set_shmem_sized(uint32_t ctx_id, apir_get_shmem_sized_fn fn) {
        std::lock_guard lk(mu_);
        entry(ctx_id).shmem.sized = fn;
    }
    /// apir_backend_initialize: the context, with the host's callbacks; null when the
    /// host passed none or lacks get_config or get_shmem_ptr (the ABI's two services).
    Context* open(uint32_t ctx_id, virgl_apir_callbacks* cbs) {
        if (!cbs || !cbs->get_config || !cbs->get_shmem_ptr) return nullptr;
        std::lock_guard lk(mu_);
        Context& c = entry(ctx_id);
        c.callbacks = cbs;
        c.shmem.unsized = cbs->get_shmem_ptr; // the sized one may never come
        if constexpr (requires(State & s) { s.open(c); }) {
            if (!c.state.open(c)) {
                contexts_.erase(ctx_id);
                closes_.fetch_add(1, std::memory_order_release);
                return nullptr;
            }
        }
        return &c;
    }
    /// apir_backend_deinit: the context and its State go.
    void close(uint32_t ctx_id) {
        std::lock_guard lk(mu_);
        contexts_.erase(ctx_id);
        closes_.fetch_add(1, std::memory_order_release);
    }
    /// The open context ctx_id, or null. The dispatcher's look-up: a thread that asks for
    /// the context it asked for last, with no context closed since, takes no lock.
    [[nodiscard]] Context* find(uint32_t ctx_id) {
        struct Hint {
            uint64_t registry = 0; // serial_, not the address: a new registry may reuse it
            uint32_t id = 0;
            uint64_t closes = 0;
            Context* context = nullptr;
        };
        thread_local Hint hint;
        // Nodes of the map never move, and ctx_id cannot be closed while it is being
        // dispatched; a close of any context since the hint was taken voids it.
        if (hint.registry == serial_ && hint.id == ctx_id && hint.context &&
            hint.closes == closes_.load(std::memory_order_acquire))
            return hint.context;
        std::lock_guard lk(mu_);
        auto it = contexts_.find(ctx_id);
        Context* c = it == contexts_.end() || !it->second.callbacks ? nullptr : &it->second;
        hint = Hint{serial_, ctx_id, closes_.load(std::memory_order_relaxed), c};
        return c;
    }

private:
    Context& entry(uint32_t ctx_id) {
        Context& c = contexts_[ctx_id];
        c.id = ctx_id;
        return c;
    }
    std::mutex mu_;
    std::unordered_map<uint32_t, Context> contexts_;
    std::atomic<uint64_t> closes_{0}; // contexts closed so far (under mu_)
    const uint64_t serial_ = [] {
        static std::atomic<uint64_t> next{1};
        return next.fetch_add(1, std::memory_order_relaxed);
    }();
};

/// The codes a DispatchTable answers on its own behalf: the backend's own numbers.
struct DispatchCodes {
    /// The reply did not fit the reply region (BackendFrame::finish).
    uint32_t reply_overflow = 0;
    /// The dispatcher was called for a context that is not open.
    uint32_t no_context = 0;
    /// A typed handler's request did not decode (too short, a bad value). Bytes after the
    /// request are left alone: ggml's guest may send a command buffer's padding.
    uint32_t bad_request = 0;
    /// A typed handler threw (e.g. std::bad_alloc): nothing crosses the C ABI.
    uint32_t failed = 0;
};

/// A typed handler's refusal: the function's result, non-zero (0 is success).
struct Refusal {
    uint32_t code = 1;
};

/// What a typed handler answers: the reply, or a refusal carrying the backend's code.
///
///     apir::Answer<AddReply> add(Context&, const AddRequest& r) {
///         if (r.a < 0) return apir::Refusal{my_negative};
///         return AddReply{r.a + r.b};
///     }
template <class Resp>
class [[nodiscard]] Answer {
public:
    Answer(Resp value) noexcept(std::is_nothrow_move_constructible_v<Resp>)
        : value_(std::move(value)) {}
    Answer(Refusal r) noexcept : code_(r.code == 0 ? 1 : r.code) {}

    [[nodiscard]] bool ok() const noexcept { return code_ == 0; }
    [[nodiscard]] uint32_t code() const noexcept { return code_; }
    [[nodiscard]] const Resp& value() const noexcept { return value_; }

private:
    uint32_t code_ = 0;
    Resp value_{};
};

/// A FORWARD handler: decodes its request from frame.request(), encodes its reply into
/// frame.reply(), returns the function's result (0: success, the reply is finished).
template <class Context>
using CommandHandler = uint32_t (*)(Context& context, BackendFrame& frame);

/// Command id -> handler, for a backend's apir_backend_dispatcher. An id without a
/// handler answers forward_invalid_index (what the guest names FORWARD_INVALID_INDEX).
/// Ids 0..N-1 index an array; up to max_extensions ids at or past N (an extension far
/// from a command set's own ids) are looked up beside it. Binding one id too many does
/// not compile (the table is built in a constant expression).
///
///     constexpr auto table = [] {
///         apir::DispatchTable<Registry::Context, my_command_count> t({.reply_overflow = 4,
///                                                                     .no_context = 5});
///         t.on(cmd_add, &add);
///         return t;
///     }();
template <class Context, size_t N>
class DispatchTable {
public:
    constexpr explicit DispatchTable(DispatchCodes codes) noexcept : codes_(codes) {}
    static constexpr size_t max_extensions = 4;

    constexpr DispatchTable& on(uint32_t id, CommandHandler<Context> handler) {
        if (id < N) {
            handlers_[id] = handler;
            return *this;
        }
        for (auto& [ext_id, ext] : extensions_)
            if (ext == nullptr || ext_id == id) {
                ext_id = id;
                ext = handler;
                return *this;
            }
        throw "DispatchTable::on: more than max_extensions ids past N";
    }

    /// Binds a call type to its handler: `Answer<Resp>(Context&, const Req&)` where the
    /// request and reply types are Call's own, so a guest's Forward<Id, Req, Resp> and the
    /// handler of Id cannot disagree (a mismatch does not compile). The table decodes the
    /// request (codes().bad_request when it does not decode), encodes
    /// the reply and finishes it; an exception from the handler answers codes().failed.
    /// The handler is a captureless lambda (or any empty,
    /// default-constructible callable); on<Call, &function>() takes a function.
    ///
    ///     t.on<Add>([](Context& c, const AddRequest& r) -> apir::Answer<AddReply> {
    ///         return AddReply{r.a + r.b};
    ///     });
    template <class C, class F>
    constexpr DispatchTable& on(F) {
        static_assert(is_call_v<C> && C::type == CommandType::forward,
                      "DispatchTable::on<C>: C must be an apir::Forward<Id, Req, Resp>");
        static_assert(std::is_empty_v<F> && std::is_default_constructible_v<F>,
                      "DispatchTable::on<C>(f): f must be captureless (its type is the handler)");
        static_assert(
            std::is_same_v<std::invoke_result_t<const F&, Context&, const typename C::request&>,
                           Answer<typename C::response>>,
            "DispatchTable::on<C>(f): f must be Answer<C::response>(Context&, const "
            "C::request&)");
        return on(C::flags, &typed_thunk<C, F>);
    }
    template <class C, Answer<typename C::response> (*Fn)(Context&, const typename C::request&)>
    constexpr DispatchTable& on() {
        return on<C>([](Context& c, const typename C::request& r) { return Fn(c, r); });
    }
    [[nodiscard]] constexpr const DispatchCodes& codes() const noexcept { return codes_; }

    /// Runs the handler of cmd on an open context (null: codes().no_context).
    [[nodiscard]] uint32_t dispatch(Context* context, uint32_t cmd,
                                    BackendFrame& frame) const noexcept {
        const CommandHandler<Context> handler = find(cmd);
        if (handler == nullptr) return forward_invalid_index;
        if (!context) return codes_.no_context;
        const uint32_t result = handler(*context, frame);
        // The thunk is static and has no table: it reports through the frame.
        if (frame.outcome() == BackendFrame::Outcome::bad_request) return codes_.bad_request;
        if (frame.outcome() == BackendFrame::Outcome::failed) return codes_.failed;
        return result == 0 ? frame.finish(codes_.reply_overflow) : result;
    }
    /// The whole apir_backend_dispatcher: finds the context in the registry, then
    /// dispatches.
    template <class Registry>
    [[nodiscard]] uint32_t operator()(Registry& registry, uint32_t ctx_id, uint32_t cmd,
                                      char* dec_cur, const char* dec_end, char* enc_cur,
                                      const char* enc_end, char** enc_cur_after) const {
        BackendFrame frame(dec_cur, dec_end, enc_cur, enc_end, enc_cur_after);
        return dispatch(registry.find(ctx_id), cmd, frame);
    }

private:
    template <class C, class F>
    static uint32_t typed_thunk(Context& context, BackendFrame& frame) {
        try {
            typename C::request req{};
            Decoder& d = frame.request();
            if (!d.get_into(req)) {
                frame.set_outcome(BackendFrame::Outcome::bad_request);
                return 1;
            }
            const Answer<typename C::response> answer = F{}(context, std::as_const(req));
            if (!answer.ok()) return answer.code();
            frame.reply().put(answer.value());
            return 0;
        } catch (...) {
            frame.set_outcome(BackendFrame::Outcome::failed);
            return 1;
        }
    }

    DispatchCodes codes_;
    constexpr CommandHandler<Context> find(uint32_t cmd) const noexcept {
        if (cmd < N) return handlers_[cmd];
        for (const auto& [id, handler] : extensions_)
            if (handler != nullptr && id == cmd) return handler;
        return nullptr;
    }

    std::array<CommandHandler<Context>, N> handlers_{};
    std::array<std::pair<uint32_t, CommandHandler<Context>>, max_extensions> extensions_{};
};

} // namespace apir

/// Defines apir_backend_set_shmem_sized, apir_backend_initialize and apir_backend_deinit
/// over an apir::ContextRegistry (a global of the backend library).
#define APIR_BACKEND_CONTEXT_ENTRY_POINTS(registry)                                                \
    APIR_BACKEND_ENTRY void apir_backend_set_shmem_sized(uint32_t ctx_id,                          \
                                                         apir_get_shmem_sized_fn fn) {             \
        (registry).set_shmem_sized(ctx_id, fn);                                                    \
    }                                                                                              \
    APIR_BACKEND_ENTRY uint32_t apir_backend_initialize(uint32_t ctx_id,                           \
                                                        virgl_apir_callbacks* cbs) {               \
        return (registry).open(ctx_id, cbs) ? ::apir::backend_init_ok                              \
                                            : ::apir::backend_init_failed;                         \
    }                                                                                              \
    APIR_BACKEND_ENTRY void apir_backend_deinit(uint32_t ctx_id) {                                 \
        (registry).close(ctx_id);                                                                  \
    }

/// Defines apir_backend_dispatcher: the registry's context, dispatched by the table.
#define APIR_BACKEND_DISPATCHER(registry, table)                                                   \
    APIR_BACKEND_ENTRY uint32_t apir_backend_dispatcher(                                           \
        uint32_t ctx_id, virgl_apir_callbacks*, uint32_t cmd, char* dec_cur, const char* dec_end,  \
        char* enc_cur, const char* enc_end, char** enc_cur_after) {                                \
        return (table)((registry), ctx_id, cmd, dec_cur, dec_end, enc_cur, enc_end,                \
                       enc_cur_after);                                                             \
    }
