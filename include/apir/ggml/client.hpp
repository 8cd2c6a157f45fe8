// apir::ggml::Device: ggml's remote device over a Session, for a ggml fork to use directly.
//
//     apir::LoopbackOptions lo;
//     lo.host.config["apir.load_library.path"] = ".../libggml-virtgpu-backend.so.0";
//     lo.host.config["ggml.library.path"] = ".../libggml-cpu.so.0";
//     lo.host.config["ggml.library.reg"] = "ggml_backend_cpu_reg";
//     apir::Session s(apir::LoopbackTransport(lo));
//     if (auto c = s.connect(); !c) return fail(c.error());
//     apir::ggml::Device dev(s);
//     auto buft = dev.buffer_type();                        // Expected<BufferTypeHandle>
//     auto buf = dev.alloc_buffer(*buft, 1 << 20);          // Expected<Buffer>
//     auto t = make_tensor(Type::f32, {256}).place(buf->handle, 0);
//     dev.set_tensor(t, std::as_bytes(std::span(values)));  // through shared memory
//     dev.graph_compute(graph);                             // Expected<void>
//
// Handles: the Device remembers every buffer type and buffer the host gave it and sends
// only those (a freed buffer is unknown from then on: GGML_UNKNOWN_HANDLE), and it sends
// a tensor only when it lies inside its buffer (ggml's host aborts on one that does not).
// Graphs are validated (validate_graph: ids, op ids ggml's host knows, no custom op, no
// chain of sources deeper than max_graph_depth) before anything is sent.
// Host replies are checked: a null handle where one is required, a base of 0 or one whose
// buffer wraps the address space, a string without NUL, a bool or enum out of range, a ggml_status
// outside ggml's enum are protocol errors. Every error names the command ("buffer_set_tensor:
// ...").
//
// Bulk data (set/get/fill) goes through the session's staging pool, in chunks of at
// most DeviceOptions::chunk_size bytes; the graph goes there too. Thread-safe: transfers
// from several threads stage their own chunks; other calls run concurrently. A chunk
// that fails ends its transfer with the error (never success with data not moved); its
// deadline covers the wait for a staging blob and the call. Metadata and transfer calls
// have finite deadlines; graph_compute waits as long as the computation takes unless
// DeviceOptions::compute_timeout is set. Tensors of every ggml type are sized
// (type_traits()). Once the host has said it offers zero-copy buffers (capabilities()),
// set, get, fill and clear of a host-pointer buffer (buffer_from_ptr), whose bytes are in
// this process, are copies in place, checked like the others, without a call.
//
// A lost host fails fast (HostWatch): a call that finds the host gone (a device error
// such as DISCONNECTED), or that timed out waiting for the host alone, marks the device
// lost, and every later call fails at once with DISCONNECTED instead of waiting again.
#pragma once

#include "apir/ggml/commands.hpp"
#include "apir/ggml/graph.hpp"
#include "apir/ggml/tensor.hpp"
#include "apir/session.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <span>
#include <string>

#include "apir/export.hpp"

APIR_EXPORT_BEGIN

namespace apir::ggml {

struct DeviceOptions {
    /// Deadline of each metadata call (names, sizes, alloc, free, base, clear, copy).
    std::chrono::nanoseconds metadata_timeout = std::chrono::seconds(10);
    /// Deadline of each chunk of a set/get transfer.
    std::chrono::nanoseconds transfer_timeout = std::chrono::seconds(60);
    /// Deadline of graph_compute; none by default (a computation takes what it takes).
    std::optional<std::chrono::nanoseconds> compute_timeout;
    /// Largest piece of one transfer staged at once (ggml's data blob: 24 MiB).
    size_t chunk_size = data_shmem_size;
};

struct Memory {
    uint64_t free = 0;
    uint64_t total = 0;
};

struct DeviceProps {
    bool async = false;
    bool host_buffer = false;
    bool buffer_from_host_ptr = false;
    bool events = false;
    bool mmap_support = false;
};

/// What the host offers past ggml's command set (capabilities()); all false for ggml's
/// own host backend.
struct Capabilities {
    bool zero_copy_buffers = false; ///< capability_zero_copy_buffers
};

/// A buffer the host allocated: its handle, its type and its size.
struct Buffer {
    BufferHandle handle;
    BufferTypeHandle type;
    uint64_t size = 0;
};

/// A buffer in guest-visible shared memory (device_buffer_from_ptr): bytes are the
/// buffer's contents, readable and writable in place. Valid until free_buffer().
struct HostPtrBuffer {
    Buffer buffer;
    std::span<std::byte> bytes;
};

namespace detail {
/// Whether the host of a Device is lost. A device error (DISCONNECTED, ...) is proof. A
/// timeout is proof only when the call waited for the host alone: no other call of the
/// device was in flight when it began, and no answer came from the host during its wait
/// (the host runs one command at a time, so a call may wait behind another stream's long
/// graph: it then fails with TIMEOUT and the device stays usable). Lock-free.
class HostWatch {
public:
    struct Ticket {
        int64_t start_ns;
        bool queued; ///< another call was in flight when this one began
    };
    [[nodiscard]] Ticket begin() noexcept;
    /// Ends t's call; err: its error, or null. Marks the host lost on proof (logged once).
    void end(const Ticket& t, const Error* err, const Logger& logger);
    [[nodiscard]] bool lost() const noexcept { return lost_.load(std::memory_order_acquire); }
    [[nodiscard]] int in_flight() const noexcept {
        return in_flight_.load(std::memory_order_acquire);
    }
    /// What a call of a lost device fails with (DISCONNECTED).
    [[nodiscard]] static Error lost_error();

private:
    std::atomic<bool> lost_{false};
    std::atomic<int> in_flight_{0};
    std::atomic<int64_t> last_answer_ns_{0}; // steady clock: when the host last answered
};

/// err with "<command>: " before its detail; code, wire code and errno kept.
[[nodiscard]] Error named(Error err, Command c);
/// A reply field that must be a ggml bool (0 or 1).
[[nodiscard]] Expected<bool> to_bool(uint8_t v, std::string_view what);
/// t's bytes [offset, offset + size) inside a buffer of buffer_size bytes, or an error.
[[nodiscard]] Expected<void> check_range(const RpcTensor& t, uint64_t buffer_size, uint64_t offset,
                                         uint64_t size);
} // namespace detail

template <Transport T>
class Device {
public:
    explicit Device(Session<T>& session, DeviceOptions options = {})
        : s_(session), options_(options) {
        if (options_.chunk_size == 0) options_.chunk_size = data_shmem_size;
    }
    /// Frees the buffers still alive (best effort), so that shared memory of host-pointer
    /// buffers is not released under the host.
    ~Device() {
        std::map<uint64_t, Record> left;
        {
            std::lock_guard lk(mu_);
            left.swap(buffers_);
        }
        for (auto& [h, rec] : left)
            if (!call<BufferFreeBuffer>(BufferRequest{rec.buffer.handle}, metadata())) break;
    }
    Device(const Device&) = delete;
    Device& operator=(const Device&) = delete;

    // --- device ----------------------------------------------------------------

    /// device_get_device_count (0) and device_get_count (1): the host backend's devices.
    [[nodiscard]] Expected<int32_t> device_count() { return count<DeviceGetDeviceCount>(); }
    [[nodiscard]] Expected<int32_t> count() { return count<DeviceGetCount>(); }
    [[nodiscard]] Expected<std::string> name() { return string<DeviceGetName>(Empty{}); }
    [[nodiscard]] Expected<std::string> description() {
        return string<DeviceGetDescription>(Empty{});
    }
    [[nodiscard]] Expected<DeviceType> type() {
        auto r = call<DeviceGetType>(Empty{}, metadata());
        if (!r) return Unexpected{std::move(r).error()};
        if (r->value > static_cast<uint32_t>(DeviceType::accel))
            return bad(Command::device_get_type, fmt::format("device type {}", r->value));
        return static_cast<DeviceType>(r->value);
    }
    [[nodiscard]] Expected<Memory> memory() {
        auto r = call<DeviceGetMemory>(Empty{}, metadata());
        if (!r) return Unexpected{std::move(r).error()};
        if (r->free > r->total)
            return bad(Command::device_get_memory,
                       fmt::format("free {} > total {}", r->free, r->total));
        return Memory{r->free, r->total};
    }
    [[nodiscard]] Expected<DeviceProps> props() {
        auto r = call<DeviceGetProps>(Empty{}, metadata());
        if (!r) return Unexpected{std::move(r).error()};
        DeviceProps p;
        const std::pair<uint8_t, bool*> f[] = {{r->async, &p.async},
                                               {r->host_buffer, &p.host_buffer},
                                               {r->buffer_from_host_ptr, &p.buffer_from_host_ptr},
                                               {r->events, &p.events},
                                               {r->mmap_support, &p.mmap_support}};
        for (auto [v, out] : f) {
            auto b = detail::to_bool(v, "a property");
            if (!b)
                return Unexpected{detail::named(std::move(b).error(), Command::device_get_props)};
            *out = *b;
        }
        return p;
    }
    /// apir's extension query (capabilities_command): what the host offers past ggml's
    /// commands. A host that does not know the query (ggml's: FORWARD_INVALID_INDEX)
    /// offers nothing, which is not an error.
    [[nodiscard]] Expected<Capabilities> capabilities() {
        auto r = call<GetCapabilities>(Empty{}, metadata());
        if (!r) {
            if (r.error() == Errc::forward_invalid_index) return Capabilities{};
            return Unexpected{std::move(r).error()};
        }
        if (r->version == 0)
            return fail(detail::named(Error(Errc::decode_bad_value, "capabilities version 0"),
                                      static_cast<Command>(capabilities_command)));
        const Capabilities caps{(r->flags & capability_zero_copy_buffers) != 0};
        zero_copy_.store(caps.zero_copy_buffers, std::memory_order_release);
        return caps;
    }
    /// The device's default buffer type.
    [[nodiscard]] Expected<BufferTypeHandle> buffer_type() {
        auto r = call<DeviceGetBufferType>(Empty{}, metadata());
        if (!r) return Unexpected{std::move(r).error()};
        if (!r->buffer_type) return bad(Command::device_get_buffer_type, "null buffer type");
        std::lock_guard lk(mu_);
        types_.insert(r->buffer_type.value());
        return r->buffer_type;
    }
    /// device_buffer_from_ptr: a buffer in a new shared-memory blob of `size` bytes that
    /// the host wraps without copying. The blob lives until free_buffer().
    [[nodiscard]] Expected<HostPtrBuffer> buffer_from_ptr(uint64_t size, uint64_t max_tensor_size) {
        if (size == 0) return fail(Errc::invalid_argument, "device_buffer_from_ptr: size 0");
        auto blob = s_.transport().create_shmem(static_cast<size_t>(size));
        if (!blob)
            return Unexpected{
                detail::named(std::move(blob).error(), Command::device_buffer_from_ptr)};
        auto r = call<DeviceBufferFromPtr>(
            BufferFromPtrRequest{blob->res_id(), size, max_tensor_size}, metadata());
        if (!r) return Unexpected{std::move(r).error()};
        if (!r->buffer)
            return fail(detail::named(Error(Errc::out_of_memory, "the host made no buffer"),
                                      Command::device_buffer_from_ptr));
        if (!r->buffer_type) return bad(Command::device_buffer_from_ptr, "null buffer type");
        HostPtrBuffer out{Buffer{r->buffer, r->buffer_type, size}, blob->bytes().first(size)};
        std::lock_guard lk(mu_);
        if (buffers_.contains(r->buffer.value()))
            return bad(Command::device_buffer_from_ptr, "the host returned a live buffer again");
        types_.insert(r->buffer_type.value());
        buffers_.emplace(r->buffer.value(), Record{out.buffer, std::move(*blob)});
        return out;
    }

    // --- buffer types ----------------------------------------------------------

    [[nodiscard]] Expected<std::string> buffer_type_name(BufferTypeHandle t) {
        APIR_TRY(known(t, Command::buffer_type_get_name));
        return string<BufferTypeGetName>(BufferTypeRequest{t});
    }
    [[nodiscard]] Expected<uint64_t> alignment(BufferTypeHandle t) {
        APIR_TRY(known(t, Command::buffer_type_get_alignment));
        auto r = call<BufferTypeGetAlignment>(BufferTypeRequest{t}, metadata());
        if (!r) return Unexpected{std::move(r).error()};
        if (r->value == 0 || (r->value & (r->value - 1)) != 0)
            return bad(Command::buffer_type_get_alignment,
                       fmt::format("alignment {} is not a power of two", r->value));
        return r->value;
    }
    /// UINT64_MAX when the type has no limit.
    [[nodiscard]] Expected<uint64_t> max_size(BufferTypeHandle t) {
        APIR_TRY(known(t, Command::buffer_type_get_max_size));
        auto r = call<BufferTypeGetMaxSize>(BufferTypeRequest{t}, metadata());
        if (!r) return Unexpected{std::move(r).error()};
        if (r->value == 0) return bad(Command::buffer_type_get_max_size, "max size 0");
        return r->value;
    }
    /// Deprecated in ggml: its host always answers false.
    [[nodiscard]] Expected<bool> is_host(BufferTypeHandle t) {
        APIR_TRY(known(t, Command::buffer_type_is_host));
        auto r = call<BufferTypeIsHost>(BufferTypeRequest{t}, metadata());
        if (!r) return Unexpected{std::move(r).error()};
        return boolean(r->value, Command::buffer_type_is_host);
    }
    /// A buffer of `size` bytes; OUT_OF_MEMORY when the host could not allocate it.
    [[nodiscard]] Expected<Buffer> alloc_buffer(BufferTypeHandle t, uint64_t size) {
        APIR_TRY(known(t, Command::buffer_type_alloc_buffer));
        auto r = call<BufferTypeAllocBuffer>(AllocBufferRequest{t, size}, metadata());
        if (!r) return Unexpected{std::move(r).error()};
        if (!r->buffer)
            return fail(
                detail::named(Error(Errc::out_of_memory,
                                    fmt::format("the host could not allocate {} bytes", size)),
                              Command::buffer_type_alloc_buffer));
        Buffer b{r->buffer, t, size};
        std::lock_guard lk(mu_);
        if (!buffers_.emplace(r->buffer.value(), Record{b, {}}).second)
            return bad(Command::buffer_type_alloc_buffer, "the host returned a live buffer again");
        return b;
    }

    // --- buffers ---------------------------------------------------------------

    /// The host address of the buffer's base (never 0, and base + size does not wrap);
    /// tensors' data offsets count from it.
    [[nodiscard]] Expected<uint64_t> base(BufferHandle b) {
        auto rec = buffer(b);
        if (!rec) return unknown(Command::buffer_get_base, "buffer");
        auto r = call<BufferGetBase>(BufferRequest{b}, metadata());
        if (!r) return Unexpected{std::move(r).error()};
        if (r->value == 0) return bad(Command::buffer_get_base, "base address 0");
        if (r->value > UINT64_MAX - rec->size)
            return bad(Command::buffer_get_base,
                       fmt::format("base {:#x} + {} bytes wraps", r->value, rec->size));
        return r->value;
    }
    /// Writes data to the tensor's bytes [offset, offset + data.size()).
    [[nodiscard]] Expected<void> set_tensor(const RpcTensor& t, Bytes data, uint64_t offset = 0) {
        return transfer<BufferSetTensor>(
            t, offset, data.size(), [&](std::span<std::byte> staged, size_t at) {
                std::memcpy(staged.data(), data.data() + at, staged.size());
            });
    }
    /// Reads the tensor's bytes [offset, offset + out.size()) into out.
    [[nodiscard]] Expected<void> get_tensor(const RpcTensor& t, std::span<std::byte> out,
                                            uint64_t offset = 0) {
        return transfer<BufferGetTensor>(
            t, offset, out.size(), [&](std::span<std::byte> staged, size_t at) {
                std::memcpy(out.data() + at, staged.data(), staged.size());
            });
    }
    /// Sets the tensor's bytes [offset, offset + size) to value (buffer_set_tensor from a
    /// staged piece filled with value: ggml's command set has no memset).
    [[nodiscard]] Expected<void> fill_tensor(const RpcTensor& t, uint8_t value, uint64_t offset,
                                             uint64_t size) {
        return transfer<BufferSetTensor>(t, offset, size, [&](std::span<std::byte> staged, size_t) {
            std::memset(staged.data(), value, staged.size());
        });
    }
    /// buffer_cpy_tensor: copies src's bytes into dst (same size) on the host; false when
    /// the host cannot copy between these buffers.
    [[nodiscard]] Expected<bool> copy_tensor(const RpcTensor& src, const RpcTensor& dst) {
        constexpr auto c = Command::buffer_cpy_tensor;
        auto ns = placed(src, c);
        if (!ns) return Unexpected{std::move(ns).error()};
        auto nd = placed(dst, c);
        if (!nd) return Unexpected{std::move(nd).error()};
        if (*ns != *nd)
            return fail(detail::named(
                Error(Errc::invalid_argument, fmt::format("src has {} bytes, dst {}", *ns, *nd)),
                c));
        auto r = call<BufferCpyTensor>(CopyTensorRequest{dst.buffer, src, dst}, metadata());
        if (!r) return Unexpected{std::move(r).error()};
        return boolean(r->value, c);
    }
    /// Sets every byte of the buffer to value.
    [[nodiscard]] Expected<void> clear(BufferHandle b, uint8_t value) {
        APIR_TRY(live(b, Command::buffer_clear));
        if (auto bytes = in_place(b); !bytes.empty()) {
            std::memset(bytes.data(), value, bytes.size());
            return {};
        }
        auto r = call<BufferClear>(ClearRequest{b, value}, metadata());
        if (!r) return Unexpected{std::move(r).error()};
        return {};
    }
    /// Frees the buffer; its handle is unknown from then on, whatever the host answers.
    [[nodiscard]] Expected<void> free_buffer(BufferHandle b) {
        std::optional<Record> rec;
        {
            std::lock_guard lk(mu_);
            auto it = buffers_.find(b.value());
            if (it == buffers_.end()) return unknown(Command::buffer_free_buffer, "buffer");
            rec.emplace(std::move(it->second));
            buffers_.erase(it);
        }
        auto r = call<BufferFreeBuffer>(BufferRequest{b}, metadata());
        if (!r) return Unexpected{std::move(r).error()};
        return {};
    }

    // --- compute ---------------------------------------------------------------

    /// backend_graph_compute: every tensor of g must lie inside a live buffer of this
    /// device. SUCCESS, or the status as an error (GGML_STATUS_FAILED, ...). Encodes the
    /// graph into a staging blob; a caller that keeps its own encoding uses compute().
    [[nodiscard]] Expected<void> graph_compute(const Graph& g) {
        return graph_compute(g.nodes(), g.tensors());
    }
    [[nodiscard]] Expected<void> graph_compute(std::span<const uint64_t> nodes,
                                               std::span<const RpcTensor> tensors) {
        constexpr auto c = Command::backend_graph_compute;
        if (auto v = validate_graph(nodes, tensors); !v)
            return fail(detail::named(std::move(v).error(), c));
        for (const RpcTensor& t : tensors)
            if (auto p = placed(t, c); !p) return Unexpected{std::move(p).error()};
        const uint64_t size = graph_encoded_size(nodes.size(), tensors.size());
        auto st = s_.stage(static_cast<size_t>(size));
        if (!st) return fail(detail::named(std::move(st).error(), c));
        if (auto e = encode_graph(nodes, tensors, st->bytes()); !e)
            return fail(detail::named(std::move(e).error(), c));
        auto status = compute(st->res_id(), size);
        if (!status) return Unexpected{std::move(status).error()};
        if (auto ok = check_status(*status); !ok)
            return fail(detail::named(std::move(ok).error(), c));
        return {};
    }
    /// backend_graph_compute of a graph the caller encoded (encode_graph) into its own
    /// shared memory (shmem()): bytes [0, size) of blob res_id. The host's status, checked
    /// to be one of ggml's.
    [[nodiscard]] Expected<Status> compute(uint32_t res_id, uint64_t size) {
        CallOptions o;
        if (options_.compute_timeout) o.deadline = Deadline::after(*options_.compute_timeout);
        auto r = call<BackendGraphCompute>(GraphComputeRequest{res_id, size}, o);
        if (!r) return Unexpected{std::move(r).error()};
        auto status = to_status(r->status);
        if (!status)
            return fail(detail::named(std::move(status).error(), Command::backend_graph_compute));
        return status;
    }
    /// Shared memory of n bytes for the caller's own use (a graph encoding it keeps);
    /// fails at once when the host is lost.
    [[nodiscard]] Expected<Shmem> shmem(size_t n) {
        if (watch_.lost()) return fail(detail::HostWatch::lost_error());
        return s_.transport().create_shmem(n);
    }

    // --- for extensions (apir/ggml/ggml_tensor.hpp) -----------------------------

    /// Makes call C with the metadata deadline; errors named after the command.
    template <class C>
    [[nodiscard]] Expected<typename C::response> metadata_call(const typename C::request& req) {
        return call<C>(req, metadata());
    }
    /// The buffer record of a live handle, or GGML_UNKNOWN_HANDLE.
    [[nodiscard]] Expected<Buffer> buffer(BufferHandle b) const {
        std::lock_guard lk(mu_);
        auto it = buffers_.find(b.value());
        if (it == buffers_.end() || b.is_null())
            return fail(Errc::ggml_unknown_handle, "buffer not allocated by this device");
        return it->second.buffer;
    }
    [[nodiscard]] bool knows(BufferTypeHandle t) const {
        std::lock_guard lk(mu_);
        return types_.contains(t.value());
    }
    [[nodiscard]] Session<T>& session() noexcept { return s_; }
    [[nodiscard]] const DeviceOptions& options() const noexcept { return options_; }
    /// True once a call found the host gone, or timed out waiting for the host alone
    /// (HostWatch): every call fails at once with DISCONNECTED from then on.
    [[nodiscard]] bool lost() const noexcept { return watch_.lost(); }
    /// Calls of this device now in flight.
    [[nodiscard]] int in_flight() const noexcept { return watch_.in_flight(); }
    /// Session::stats() with ggml's command names.
    [[nodiscard]] std::vector<NamedStats> stats() const { return named_stats(s_.stats()); }

private:
    struct Record {
        Buffer buffer;
        Shmem blob; // host-pointer buffers only
    };

    CallOptions metadata() const {
        CallOptions o;
        o.deadline = Deadline::after(options_.metadata_timeout);
        return o;
    }

    template <class C>
    Expected<typename C::response> call(const typename C::request& req, const CallOptions& o) {
        if (watch_.lost())
            return fail(
                detail::named(detail::HostWatch::lost_error(), static_cast<Command>(C::flags)));
        const auto ticket = watch_.begin();
        auto r = s_.template call<C>(req, o);
        watch_.end(ticket, r ? nullptr : &r.error(), s_.options().logger);
        if (!r) {
            auto e = detail::named(std::move(r).error(), static_cast<Command>(C::flags));
            s_.options().logger.debug("{}", e);
            return fail(std::move(e));
        }
        return r;
    }

    static Unexpected bad(Command c, std::string detail) {
        return fail(detail::named(Error(Errc::decode_bad_value, std::move(detail)), c));
    }
    static Unexpected unknown(Command c, std::string_view what) {
        return fail(detail::named(
            Error(Errc::ggml_unknown_handle, fmt::format("{} not received from this device", what)),
            c));
    }
    static Expected<bool> boolean(uint8_t v, Command c) {
        auto b = detail::to_bool(v, "the reply");
        if (!b) return fail(detail::named(std::move(b).error(), c));
        return b;
    }

    template <class C>
    Expected<int32_t> count() {
        auto r = call<C>(Empty{}, metadata());
        if (!r) return Unexpected{std::move(r).error()};
        if (r->value < 0)
            return bad(static_cast<Command>(C::flags), fmt::format("count {}", r->value));
        return r->value;
    }
    template <class C>
    Expected<std::string> string(const typename C::request& req) {
        auto r = call<C>(req, metadata());
        if (!r) return Unexpected{std::move(r).error()};
        return std::move(r->value);
    }

    Expected<void> known(BufferTypeHandle t, Command c) const {
        if (t.is_null() || !knows(t)) return unknown(c, "buffer type");
        return {};
    }
    Expected<void> live(BufferHandle b, Command c) const {
        if (!buffer(b)) return unknown(c, "buffer");
        return {};
    }
    // nbytes of t after checking that it lies inside its live buffer.
    Expected<uint64_t> placed(const RpcTensor& t, Command c) const {
        auto b = buffer(t.buffer);
        if (!b) return unknown(c, "the tensor's buffer");
        auto n = nbytes(t);
        if (!n) return fail(detail::named(std::move(n).error(), c));
        if (auto ok = detail::check_range(t, b->size, 0, *n); !ok)
            return fail(detail::named(std::move(ok).error(), c));
        return n;
    }

    // The bytes of a live host-pointer buffer, in this process, when the host offers
    // zero-copy buffers; empty otherwise (the host moves the bytes).
    std::span<std::byte> in_place(BufferHandle b) const {
        if (!zero_copy_.load(std::memory_order_acquire)) return {};
        std::lock_guard lk(mu_);
        auto it = buffers_.find(b.value());
        if (it == buffers_.end() || !it->second.blob) return {};
        return it->second.blob.bytes().first(static_cast<size_t>(it->second.buffer.size));
    }

    // set/get: chunks of at most chunk_size through the staging blob (in place for a
    // host-pointer buffer); move(piece, at) copies between the caller's bytes at `at` and
    // the piece.
    template <class C, class Move>
    Expected<void> transfer(const RpcTensor& t, uint64_t offset, uint64_t size, Move&& move) {
        constexpr auto c = static_cast<Command>(C::flags);
        auto n = placed(t, c);
        if (!n) return Unexpected{std::move(n).error()};
        if (offset > *n || size > *n - offset)
            return fail(detail::named(
                Error(Errc::invalid_argument,
                      fmt::format("bytes [{}, +{}) outside the tensor's {}", offset, size, *n)),
                c));
        if (auto bytes = in_place(t.buffer); !bytes.empty()) {
            // placed() and the check above keep [t.data + offset, +size) inside the blob.
            move(bytes.subspan(static_cast<size_t>(t.data + offset), static_cast<size_t>(size)), 0);
            return {};
        }
        constexpr bool upload = std::is_same_v<C, BufferSetTensor>;
        for (uint64_t at = 0; at < size;) {
            const size_t piece =
                static_cast<size_t>(std::min<uint64_t>(size - at, options_.chunk_size));
            // One deadline per chunk: waiting for a staging blob counts against it too.
            const Deadline deadline = Deadline::after(options_.transfer_timeout);
            if (watch_.lost()) return fail(detail::named(detail::HostWatch::lost_error(), c));
            auto st = s_.stage(piece, deadline);
            if (!st) return fail(detail::named(std::move(st).error(), c));
            if constexpr (upload) move(st->bytes(), static_cast<size_t>(at));
            CallOptions o;
            o.deadline = deadline;
            auto r =
                call<C>(TensorTransferRequest{t.buffer, t, st->res_id(), offset + at, piece}, o);
            if (!r) return Unexpected{std::move(r).error()};
            if constexpr (!upload) move(st->bytes(), static_cast<size_t>(at));
            at += piece;
        }
        return {};
    }

    Session<T>& s_;
    DeviceOptions options_;
    mutable std::mutex mu_;
    std::set<uint64_t> types_;
    std::map<uint64_t, Record> buffers_;
    detail::HostWatch watch_;
    std::atomic<bool> zero_copy_{false}; // capabilities() said: zero-copy buffers
};

} // namespace apir::ggml

APIR_EXPORT_END
