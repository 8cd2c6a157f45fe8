// ggml's backend interfaces (ggml-backend-impl.h) on a Remote: registration, device,
// buffer type, buffer and backend stream. Failures never abort: an allocation that
// fails returns null, a compute that fails returns GGML_STATUS_FAILED, and the reason
// goes to ggml's logger.
#include "ggml-apir.h"
#include "registry.hpp"
#include "tensor_codec.hpp"

#include "ggml-backend-impl.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstring>
#include <ctime>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <unordered_map>
#include <vector>

namespace apir::ggml_remote {

namespace {

constexpr const char* reg_name = "APIR";

struct Device;

/// Byte ranges [begin, end) of a buffer (offsets from its base) whose contents are not
/// what the program believes: a set, memset, copy or clear of them failed.
class Untrusted {
public:
    void add(uint64_t begin, uint64_t end) {
        if (begin >= end) return;
        std::lock_guard lk(mu_);
        for (auto [b, e] : ranges_)
            if (b <= begin && end <= e) return; // already there: repeated failures add nothing
        ranges_.emplace_back(begin, end);
        count_.store(ranges_.size(), std::memory_order_release);
    }
    /// Written successfully: trusted again.
    void remove(uint64_t begin, uint64_t end) {
        if (begin >= end || !any()) return;
        std::lock_guard lk(mu_);
        if (ranges_.empty()) return;
        std::vector<std::pair<uint64_t, uint64_t>> kept;
        for (auto [b, e] : ranges_) {
            if (e <= begin || b >= end) {
                kept.emplace_back(b, e);
                continue;
            }
            if (b < begin) kept.emplace_back(b, begin);
            if (e > end) kept.emplace_back(end, e);
        }
        ranges_.swap(kept);
        count_.store(ranges_.size(), std::memory_order_release);
    }
    void clear() {
        std::lock_guard lk(mu_);
        ranges_.clear();
        count_.store(0, std::memory_order_release);
    }
    /// Whether any range is untrusted (a read without the lock: a range added meanwhile
    /// is as if it came after this call).
    [[nodiscard]] bool any() const noexcept { return count_.load(std::memory_order_acquire) != 0; }
    [[nodiscard]] bool overlaps(uint64_t begin, uint64_t end) const {
        if (!any()) return false;
        std::lock_guard lk(mu_);
        for (auto [b, e] : ranges_)
            if (b < end && begin < e) return true;
        return false;
    }

private:
    mutable std::mutex mu_;
    std::vector<std::pair<uint64_t, uint64_t>> ranges_;
    std::atomic<size_t> count_{0}; ///< ranges_.size(), for any()
};

/// The host's last answer to get_memory, given again while it is younger than the
/// configuration's max age, so that a program asking in a loop does not make a call each
/// time. A buffer made or freed forgets it (and an answer asked for before that is not
/// kept); an answer's age counts from when it was asked for. Read without a lock: a
/// sequence count, odd while a writer changes the fields, and the coarse monotonic clock
/// (a few milliseconds' resolution), so that an answer given again costs about a copy.
class MemoryCache {
public:
    /// The kept answer if it is younger than max_age; `generation` is what store() of a
    /// fresh answer needs.
    std::optional<ggml::Memory> get(std::chrono::milliseconds max_age,
                                    uint64_t& generation) const noexcept {
        for (int tries = 0; tries < 4; ++tries) {
            generation = generation_.load(std::memory_order_acquire);
            const uint64_t seq = seq_.load(std::memory_order_acquire);
            if (seq & 1) continue;
            // Acquire loads: the second look at seq_ cannot move before them.
            const ggml::Memory m{free_.load(std::memory_order_acquire),
                                 total_.load(std::memory_order_acquire)};
            const int64_t at = at_ns_.load(std::memory_order_acquire);
            if (seq_.load(std::memory_order_relaxed) != seq) continue;
            if (at < 0 || now_ns() - at >= std::chrono::nanoseconds(max_age).count())
                return std::nullopt;
            return m;
        }
        return std::nullopt;
    }
    /// Keeps m, asked for at `asked_at` (now_ns()), unless forget() came after get() gave
    /// `generation` or the answer kept was asked for later.
    void store(ggml::Memory m, uint64_t generation, int64_t asked_at) noexcept {
        std::lock_guard lk(mu_);
        if (generation != generation_.load(std::memory_order_relaxed)) return;
        if (at_ns_.load(std::memory_order_relaxed) > asked_at) return;
        write(m, asked_at);
    }
    void forget() noexcept {
        std::lock_guard lk(mu_);
        generation_.fetch_add(1, std::memory_order_release);
        write({}, -1);
    }
    /// The coarse monotonic clock, in nanoseconds.
    static int64_t now_ns() noexcept {
        timespec ts{};
        clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
        return int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
    }

private:
    // Release stores: the first increment of seq_ is seen before any of them, and they
    // before the second.
    void write(ggml::Memory m, int64_t at) noexcept {
        seq_.fetch_add(1, std::memory_order_relaxed); // odd: changing
        free_.store(m.free, std::memory_order_release);
        total_.store(m.total, std::memory_order_release);
        at_ns_.store(at, std::memory_order_release);
        seq_.fetch_add(1, std::memory_order_release); // even: stable
    }

    std::mutex mu_; // writers
    std::atomic<uint64_t> generation_{0}, seq_{0}, free_{0}, total_{0};
    std::atomic<int64_t> at_ns_{-1}; // -1: nothing kept
};

/// A buffer of the device. Shared: the device's table of live buffers holds one
/// reference, and every call that uses the buffer holds another while it runs, so the
/// host's buffer is freed (by the last holder) only after every call that named it.
struct Buffer {
    Device* dev = nullptr;
    RemoteBuffer remote;
    /// A zero-copy buffer's bytes in this process (the blob the host wraps), alive as
    /// long as this Buffer is; empty for a buffer in the host's own memory.
    std::span<std::byte> in_place;
    Untrusted untrusted;
    ~Buffer();
};

struct Stream {
    Device* dev;
    std::mutex mu;
    Shmem graph_blob; // reused for every graph of this stream
    /// The last graphs encoded (a program may alternate between many: ggml's scheduler
    /// runs one per split, dozens a token for a large model with its attention on
    /// another device), each reused while it stays the same; the least recently used one
    /// is encoded over.
    static constexpr size_t kept_encodings = 64;
    std::array<GraphEncoding, kept_encodings> encodings;
    std::array<uint64_t, kept_encodings> last_use{};
    uint64_t uses = 0;
    const GraphEncoding* in_blob = nullptr; ///< whose bytes graph_blob holds

    /// The encoding to build graph into: the one that last had its nodes, else the least
    /// recently used.
    GraphEncoding& encoding_for(const ggml_cgraph* graph) {
        size_t pick = 0;
        for (size_t i = 0; i < encodings.size(); ++i) {
            if (encodings[i].same_nodes(graph)) {
                pick = i;
                break;
            }
            if (last_use[i] < last_use[pick]) pick = i;
        }
        last_use[pick] = ++uses;
        return encodings[pick];
    }
};

struct Device {
    ggml_backend_device dev{};
    ggml_backend_buffer_type buft{};
    std::unique_ptr<Remote> remote;
    std::string name, description, buft_name;
    enum ggml_backend_dev_type type = GGML_BACKEND_DEVICE_TYPE_GPU;
    BufferTypeHandle buft_handle;
    size_t alignment = 0, max_size = 0;
    /// Buffers are made in shared memory (the host offers it and the configuration
    /// allows it): set, get, memset and clear are copies in this process.
    bool zero_copy = false;
    // ggml's buffers of this device that are not freed; a pointer is looked up here
    // before anything of it is read, so a freed buffer is never followed. After remote:
    // destroyed first, each freeing its host buffer.
    mutable std::mutex live_mu;
    std::unordered_map<const ggml_backend_buffer*, std::shared_ptr<Buffer>> live;

    /// The host's last memory answer, given again while it is young enough.
    MemoryCache memory_seen;
    void forget_memory() { memory_seen.forget(); }

    const Logger& log() const { return remote->logger(); }
    /// The buffer behind a ggml buffer if it is a live one of this device's, held.
    std::shared_ptr<Buffer> hold(const ggml_backend_buffer* b) const {
        if (!b) return nullptr;
        std::lock_guard lk(live_mu);
        auto it = live.find(b);
        return it == live.end() ? nullptr : it->second;
    }
    ~Device() {
        std::lock_guard lk(live_mu);
        live.clear();
    }
};

Buffer::~Buffer() {
    const BufferHandle h = remote.buffer.handle;
    if (auto r = dev->remote->device().free_buffer(h); !r)
        dev->log().warn("free_buffer {:#x}: {}", h.value(), r.error().message());
    dev->forget_memory();
}

/// Buffers a call resolved, held until the call is over.
struct Holds {
    const Device* dev;
    std::unordered_map<const ggml_backend_buffer*, std::shared_ptr<Buffer>> held;

    const RemoteBuffer* resolve(const ggml_backend_buffer* b) {
        if (!b) return nullptr;
        if (auto it = held.find(b); it != held.end()) return &it->second->remote;
        auto h = dev->hold(b);
        if (!h) return nullptr;
        const RemoteBuffer* r = &h->remote;
        held.emplace(b, std::move(h));
        return r;
    }
    Buffer* buffer(const ggml_backend_buffer* b) const {
        auto it = held.find(b);
        return it == held.end() ? nullptr : it->second.get();
    }
    BufferResolver resolver() {
        return [this](const ggml_backend_buffer* b) { return resolve(b); };
    }
};

Device* device_of(ggml_backend_dev_t d) {
    return static_cast<Device*>(d->context);
}
Device* device_of(ggml_backend_buffer_type_t b) {
    return static_cast<Device*>(b->context);
}
Device* device_of(ggml_backend_buffer_t b) {
    return device_of(b->buft);
}

// ---- buffer

void buffer_free(ggml_backend_buffer_t b) {
    Device* dev = device_of(b);
    std::shared_ptr<Buffer> last;
    {
        std::lock_guard lk(dev->live_mu);
        if (auto it = dev->live.find(b); it != dev->live.end()) {
            last = std::move(it->second);
            dev->live.erase(it);
        }
    }
    b->context = nullptr;
    // `last` goes here, or with the last call that still uses the buffer: then the host
    // frees it.
}

void* buffer_get_base(ggml_backend_buffer_t b) {
    return reinterpret_cast<void*>(
        static_cast<uintptr_t>(static_cast<Buffer*>(b->context)->remote.base));
}

/// Bytes [offset, offset + size) of t as offsets from its buffer's base, clipped to the
/// buffer.
std::pair<uint64_t, uint64_t> byte_range(const Buffer& buf, const ggml_tensor* t, uint64_t offset,
                                         uint64_t size) {
    const uint64_t limit = buf.remote.buffer.size;
    const auto addr = reinterpret_cast<uintptr_t>(t->data);
    if (addr < buf.remote.base) return {0, 0};
    const uint64_t at = addr - buf.remote.base;
    auto clip = [&](uint64_t v) { return std::min(v, limit); };
    const uint64_t begin = offset > limit - std::min(at, limit) ? limit : clip(at + offset);
    const uint64_t end = size > limit - begin ? limit : clip(begin + size);
    return {begin, end};
}

uint64_t nbytes_or_zero(const ggml_tensor* t) {
    auto n = tensor_nbytes(t);
    return n ? *n : 0;
}

/// What a failed get writes, so that the program cannot take it for data: every byte
/// 0xff (NaN in f32, f16 and bf16; -1 in integer types).
constexpr uint8_t failed_get_fill = 0xff;

/// t's bytes [offset, +size) in this process when buf is a zero-copy buffer and they
/// lie inside the tensor and the tensor inside the buffer; nullopt otherwise (the
/// buffer is the host's, or the request is bad and the checked path names why).
std::optional<std::span<std::byte>> bytes_in_place(const Buffer& buf, const ggml_tensor* t,
                                                   uint64_t offset, uint64_t size) {
    if (buf.in_place.empty() || t->type < 0 || t->type >= GGML_TYPE_COUNT) return std::nullopt;
    auto n = tensor_nbytes(t);
    if (!n || offset > *n || size > *n - offset) return std::nullopt;
    const auto at = offset_inside(t, buf.remote.base, buf.in_place.size(), *n);
    if (!at) return std::nullopt;
    return buf.in_place.subspan(static_cast<size_t>(*at + offset), static_cast<size_t>(size));
}

/// Runs f(device, rpc tensor), a transfer of t's bytes [offset, +size) of buffer b, or,
/// for a zero-copy buffer, local(bytes): a copy in place, with no call and none of the
/// client's lookups; logs what failed. A write (set, memset) that fails leaves those bytes
/// untrusted; one that succeeds makes them trusted again. A read of untrusted bytes
/// fails without a call.
template <class F, class L>
bool transfer(ggml_backend_buffer_t b, const ggml_tensor* t, const char* what, bool write,
              uint64_t offset, uint64_t size, F&& f, L&& local) {
    Device* dev = device_of(b);
    auto buf = dev->hold(b);
    if (!buf) {
        dev->log().error("{} '{}': its buffer is not a live buffer of this device (freed?)", what,
                         t->name);
        return false;
    }
    const auto [begin, end] = byte_range(*buf, t, offset, size);
    Expected<void> r;
    if (!write && buf->untrusted.overlaps(begin, end)) {
        r = fail(Errc::invalid_argument,
                 "its bytes are untrusted: an earlier set, memset, copy or clear of them failed");
    } else if (auto bytes = bytes_in_place(*buf, t, offset, size)) {
        if (size > 0) local(*bytes);
    } else {
        auto rt = encode_rpc_tensor(t, buf->remote);
        r = rt ? f(dev->remote->device(), *rt) : Expected<void>(Unexpected{std::move(rt).error()});
    }
    if (write) {
        if (r)
            buf->untrusted.remove(begin, end);
        else
            buf->untrusted.add(begin, end);
    }
    if (!r)
        dev->log().error("{} '{}' bytes [{}, +{}) failed{}: {}", what, t->name, offset, size,
                         write ? "; they are untrusted until written again" : "",
                         r.error().message());
    return r.has_value();
}

void buffer_memset_tensor(ggml_backend_buffer_t b, ggml_tensor* t, uint8_t value, size_t offset,
                          size_t size) {
    transfer(
        b, t, "memset_tensor", true, offset, size,
        [&](Remote::Device& d, const RpcTensor& rt) {
            return d.fill_tensor(rt, value, offset, size);
        },
        [&](std::span<std::byte> bytes) { std::memset(bytes.data(), value, bytes.size()); });
}

void buffer_set_tensor(ggml_backend_buffer_t b, ggml_tensor* t, const void* data, size_t offset,
                       size_t size) {
    const Bytes bytes(static_cast<const std::byte*>(data), size);
    transfer(
        b, t, "set_tensor", true, offset, size,
        [&](Remote::Device& d, const RpcTensor& rt) { return d.set_tensor(rt, bytes, offset); },
        [&](std::span<std::byte> to) { std::memcpy(to.data(), data, size); });
}

void buffer_get_tensor(ggml_backend_buffer_t b, const ggml_tensor* t, void* data, size_t offset,
                       size_t size) {
    const std::span<std::byte> out(static_cast<std::byte*>(data), size);
    if (!transfer(
            b, t, "get_tensor", false, offset, size,
            [&](Remote::Device& d, const RpcTensor& rt) { return d.get_tensor(rt, out, offset); },
            [&](std::span<const std::byte> from) { std::memcpy(data, from.data(), size); }))
        std::memset(data, failed_get_fill, size);
}

bool buffer_cpy_tensor(ggml_backend_buffer_t b, const ggml_tensor* src, ggml_tensor* dst) {
    Device* dev = device_of(b);
    auto dst_buf = dev->hold(b);
    // The host can copy only between buffers it holds: src must be this device's too.
    auto src_buf = dev->hold(tensor_buffer(src));
    if (!dst_buf || !src_buf) return false;
    auto ns = tensor_nbytes(src), nd = tensor_nbytes(dst);
    if (!ns || !nd || *ns != *nd) return false;
    const auto [sb, se] = byte_range(*src_buf, src, 0, *ns);
    const auto [db, de] = byte_range(*dst_buf, dst, 0, *nd);
    if (src_buf->untrusted.overlaps(sb, se)) {
        // The copy would carry untrusted bytes: dst is untrusted as well.
        dev->log().error("cpy_tensor '{}' -> '{}': the source's bytes are untrusted (an "
                         "earlier write failed); the destination is untrusted too",
                         src->name, dst->name);
        dst_buf->untrusted.add(db, de);
        return true;
    }
    auto rs = encode_rpc_tensor(src, src_buf->remote);
    auto rd = encode_rpc_tensor(dst, dst_buf->remote);
    Expected<bool> r = !rs   ? Expected<bool>(Unexpected{rs.error()})
                       : !rd ? Expected<bool>(Unexpected{rd.error()})
                             : dev->remote->device().copy_tensor(*rs, *rd);
    if (!r) {
        dev->log().error("cpy_tensor '{}' -> '{}' failed; the destination is untrusted until "
                         "written again: {}",
                         src->name, dst->name, r.error().message());
        dst_buf->untrusted.add(db, de);
        return false; // ggml falls back to get + set, which may heal it
    }
    if (*r) dst_buf->untrusted.remove(db, de);
    return *r;
}

void buffer_clear(ggml_backend_buffer_t b, uint8_t value) {
    Device* dev = device_of(b);
    auto buf = dev->hold(b);
    if (!buf) {
        dev->log().error("clear: not a live buffer of this device (freed?)");
        return;
    }
    const BufferHandle h = buf->remote.buffer.handle;
    if (auto r = dev->remote->device().clear(h, value); !r) {
        dev->log().error("clear failed; the whole buffer is untrusted until written again: {}",
                         r.error().message());
        buf->untrusted.add(0, buf->remote.buffer.size);
        return;
    }
    buf->untrusted.clear();
}

const ggml_backend_buffer_i buffer_iface = {
    /* .free_buffer   = */ buffer_free,
    /* .get_base      = */ buffer_get_base,
    /* .init_tensor   = */ nullptr,
    /* .memset_tensor = */ buffer_memset_tensor,
    /* .set_tensor    = */ buffer_set_tensor,
    /* .get_tensor    = */ buffer_get_tensor,
    /* .set_tensor_2d = */ nullptr,
    /* .get_tensor_2d = */ nullptr,
    /* .cpy_tensor    = */ buffer_cpy_tensor,
    /* .clear         = */ buffer_clear,
    /* .reset         = */ nullptr,
};

// ---- buffer type

const char* buft_get_name(ggml_backend_buffer_type_t t) {
    return device_of(t)->buft_name.c_str();
}

ggml_backend_buffer_t buft_alloc_buffer(ggml_backend_buffer_type_t t, size_t size) {
    Device* dev = device_of(t);
    Remote& remote = *dev->remote;
    // Whatever happens below made or freed host memory: a memory answer asked for
    // before the function returns is not kept.
    struct ForgetMemory {
        Device* dev;
        ~ForgetMemory() { dev->forget_memory(); }
    } forget_memory{dev};
    // A zero-copy buffer is a host-pointer buffer: Device moves its bytes in place.
    Expected<ggml::Buffer> b = fail(Errc::invalid_argument, "no buffer");
    std::span<std::byte> in_place;
    if (dev->zero_copy && size > 0) {
        auto z = remote.device().buffer_from_ptr(size, size);
        if (z) {
            b = z->buffer;
            in_place = z->bytes;
        } else {
            dev->log().info("a zero-copy buffer of {} bytes: {}; the host's own memory instead",
                            size, z.error().message());
        }
    }
    if (!b) b = remote.device().alloc_buffer(dev->buft_handle, size);
    if (!b) {
        dev->log().error("alloc_buffer of {} bytes: {}", size, b.error().message());
        return nullptr;
    }
    auto base = remote.device().base(b->handle);
    // ggml's allocator relies on the base: aligned as the buffer type says, and the
    // buffer's bytes not wrapping the address space.
    if (base && *base % dev->alignment != 0)
        base = fail(Errc::decode_bad_value,
                    fmt::format("buffer_get_base: base {:#x} is not aligned to the buffer "
                                "type's {} bytes",
                                *base, dev->alignment));
    else if (base && *base > UINTPTR_MAX - size)
        base = fail(Errc::decode_bad_value,
                    fmt::format("buffer_get_base: base {:#x} + {} bytes wraps", *base, size));
    if (!base) {
        dev->log().error("alloc_buffer of {} bytes: {}", size, base.error().message());
        (void)remote.device().free_buffer(b->handle);
        return nullptr;
    }
    auto ctx = std::make_shared<Buffer>();
    ctx->dev = dev;
    ctx->remote = RemoteBuffer{*b, *base};
    ctx->in_place = in_place;
    ggml_backend_buffer_t gb = ggml_backend_buffer_init(t, buffer_iface, ctx.get(), size);
    std::lock_guard lk(dev->live_mu);
    dev->live.emplace(gb, std::move(ctx));
    return gb;
}

size_t buft_get_alignment(ggml_backend_buffer_type_t t) {
    return device_of(t)->alignment;
}
size_t buft_get_max_size(ggml_backend_buffer_type_t t) {
    return device_of(t)->max_size;
}

const ggml_backend_buffer_type_i buft_iface = {
    /* .get_name       = */ buft_get_name,
    /* .alloc_buffer   = */ buft_alloc_buffer,
    /* .get_alignment  = */ buft_get_alignment,
    /* .get_max_size   = */ buft_get_max_size,
    /* .get_alloc_size = */ nullptr, // ggml_nbytes, as the host's CPU buffers need
    /* .is_host        = */ nullptr,
};

// ---- backend stream

const char* stream_get_name(ggml_backend_t b) {
    return static_cast<Stream*>(b->context)->dev->name.c_str();
}

void stream_free(ggml_backend_t b) {
    delete static_cast<Stream*>(b->context);
    delete b;
}

ggml_status stream_graph_compute(ggml_backend_t b, ggml_cgraph* graph) {
    auto* s = static_cast<Stream*>(b->context);
    Device* dev = s->dev;
    std::lock_guard lk(s->mu);
    // Every buffer the graph names is held until the host has answered: one freed by
    // another thread meanwhile is freed on the host only after this call.
    Holds holds{dev, {}};
    GraphEncoding& encoding = s->encoding_for(graph);
    auto built = encoding.build(graph, holds.resolver());
    // Built anew (or not at all): whatever the blob holds is not this encoding's bytes,
    // even where the last write was of this encoding (a refusal below returns before
    // the write).
    if (!built || !encoding.reused()) {
        if (s->in_blob == &encoding) s->in_blob = nullptr;
    }
    if (auto& r = built; !r) {
        dev->log().error("graph_compute: {}", r.error().message());
        return GGML_STATUS_FAILED;
    }
    if (encoding.node_count() == 0) return GGML_STATUS_SUCCESS; // nothing to run
    // Bytes that an earlier failure left untrusted (usually none at all).
    const bool any_untrusted = std::any_of(holds.held.begin(), holds.held.end(),
                                           [](const auto& h) { return h.second->untrusted.any(); });
    // The data the graph reads must be what the program wrote.
    for (size_t i = 0; any_untrusted && i < encoding.inputs().size(); ++i) {
        const ggml_tensor* t = encoding.inputs()[i];
        Buffer* buf = holds.buffer(tensor_buffer(t));
        if (!buf) continue;
        const auto [begin, end] = byte_range(*buf, t, 0, nbytes_or_zero(t));
        if (buf->untrusted.overlaps(begin, end)) {
            dev->log().error("graph_compute: tensor '{}' holds untrusted bytes (an earlier "
                             "set, memset, copy or clear of them failed); not computed",
                             t->name);
            return GGML_STATUS_FAILED;
        }
    }
    const size_t n = encoding.size();
    if (s->graph_blob.size() < n) {
        s->graph_blob.reset();
        s->in_blob = nullptr;
        auto blob = dev->remote->device().shmem(std::max(n, size_t{1} << 20));
        if (!blob) {
            dev->log().error("graph_compute: shared memory for {} bytes: {}", n,
                             blob.error().message());
            return GGML_STATUS_ALLOC_FAILED;
        }
        s->graph_blob = std::move(*blob);
    }
    // The graph the blob was last written with, unchanged (in_blob is cleared above when
    // it was built anew): its bytes are there already (nothing else in this process
    // writes the blob).
    if (s->in_blob != &encoding) {
        s->in_blob = nullptr;
        if (auto w = encoding.write(s->graph_blob.bytes()); !w) {
            dev->log().error("graph_compute: {}", w.error().message());
            return GGML_STATUS_FAILED;
        }
        s->in_blob = &encoding;
    }
    auto st = dev->remote->device().compute(s->graph_blob.res_id(), n);
    // The nodes' bytes are what the host just computed when it succeeded; after a
    // failure or a timeout (the host may still be writing them) they are not to be trusted.
    const bool computed = st && *st == ggml::Status::success;
    if (!computed || any_untrusted) {
        for (int i = 0; i < ggml_graph_n_nodes(graph); ++i) {
            const ggml_tensor* t = ggml_graph_node(graph, i);
            Buffer* buf = t->view_src ? nullptr : holds.buffer(t->buffer);
            if (!buf) continue;
            const auto [begin, end] = byte_range(*buf, t, 0, nbytes_or_zero(t));
            if (computed)
                buf->untrusted.remove(begin, end);
            else
                buf->untrusted.add(begin, end);
        }
    }
    if (!st) {
        dev->log().error("graph_compute of {} nodes: {}", ggml_graph_n_nodes(graph),
                         st.error().message());
        return GGML_STATUS_FAILED;
    }
    if (*st != ggml::Status::success)
        dev->log().warn("graph_compute: the host answered {}", ggml::status_name(*st));
    return static_cast<ggml_status>(static_cast<int32_t>(*st));
}

ggml_guid_t stream_guid() {
    // "apir-ggml-remote", fixed: identifies backends of this library.
    static ggml_guid guid = {0x61, 0x70, 0x69, 0x72, 0x2d, 0x67, 0x67, 0x6d,
                             0x6c, 0x2d, 0x72, 0x65, 0x6d, 0x6f, 0x74, 0x65};
    return &guid;
}

const ggml_backend_i stream_iface = {
    /* .get_name            = */ stream_get_name,
    /* .free                = */ stream_free,
    /* .set_tensor_async    = */ nullptr,
    /* .get_tensor_async    = */ nullptr,
    /* .set_tensor_2d_async = */ nullptr,
    /* .get_tensor_2d_async = */ nullptr,
    /* .cpy_tensor_async    = */ nullptr,
    /* .synchronize         = */ nullptr, // every call completes before it returns
    /* .graph_plan_create   = */ nullptr,
    /* .graph_plan_free     = */ nullptr,
    /* .graph_plan_update   = */ nullptr,
    /* .graph_plan_compute  = */ nullptr,
    /* .graph_compute       = */ stream_graph_compute,
    /* .event_record        = */ nullptr,
    /* .event_wait          = */ nullptr,
    /* .graph_optimize      = */ nullptr,
};

// ---- device

const char* dev_get_name(ggml_backend_dev_t d) {
    return device_of(d)->name.c_str();
}
const char* dev_get_description(ggml_backend_dev_t d) {
    return device_of(d)->description.c_str();
}

void dev_get_memory(ggml_backend_dev_t d, size_t* free, size_t* total) {
    Device* dev = device_of(d);
    const auto max_age = dev->remote->memory_max_age();
    uint64_t generation = 0;
    std::optional<ggml::Memory> m = dev->memory_seen.get(max_age, generation);
    if (!m) {
        const int64_t asked_at = MemoryCache::now_ns();
        auto asked = dev->remote->device().memory();
        if (!asked) {
            dev->log().warn("get_memory: {}", asked.error().message());
            *free = *total = 0;
            return;
        }
        m = *asked;
        if (max_age.count() > 0) dev->memory_seen.store(*m, generation, asked_at);
    }
    *free = static_cast<size_t>(m->free);
    *total = static_cast<size_t>(m->total);
}

enum ggml_backend_dev_type dev_get_type(ggml_backend_dev_t d) {
    return device_of(d)->type;
}

void dev_get_props(ggml_backend_dev_t d, ggml_backend_dev_props* props) {
    props->name = dev_get_name(d);
    props->description = dev_get_description(d);
    dev_get_memory(d, &props->memory_free, &props->memory_total);
    props->type = dev_get_type(d);
    props->device_id = nullptr;
    // Every call completes before it returns; there is no host buffer, no buffer from a
    // guest pointer and no event across APIR.
    props->caps = {false, false, false, false, false};
}

ggml_backend_t dev_init_backend(ggml_backend_dev_t d, const char*) {
    Device* dev = device_of(d);
    if (dev->remote->device().lost()) {
        dev->log().error("init_backend: the host is lost");
        return nullptr;
    }
    auto* s = new Stream{};
    s->dev = dev;
    return new ggml_backend{stream_guid(), stream_iface, d, s};
}

ggml_backend_buffer_type_t dev_get_buffer_type(ggml_backend_dev_t d) {
    return &device_of(d)->buft;
}

bool dev_supports_op(ggml_backend_dev_t d, const ggml_tensor* op) {
    switch (op->op) {
    case GGML_OP_NONE:
    case GGML_OP_RESHAPE:
    case GGML_OP_VIEW:
    case GGML_OP_PERMUTE:
    case GGML_OP_TRANSPOSE:
        return true; // no computation: every ggml backend takes them
    default:
        break;
    }
    Device* dev = device_of(d);
    auto buf = dev->hold(op->buffer);
    const BufferHandle h = buf ? buf->remote.buffer.handle : BufferHandle{};
    auto r = ggml::supports_op(dev->remote->device(), op, h);
    if (!r) {
        dev->log().warn("supports_op {}: {}", ggml_op_desc(op), r.error().message());
        return false;
    }
    return *r;
}

bool dev_supports_buft(ggml_backend_dev_t d, ggml_backend_buffer_type_t t) {
    return t == &device_of(d)->buft;
}

bool dev_offload_op(ggml_backend_dev_t, const ggml_tensor*) {
    return false;
}

const ggml_backend_device_i device_iface = {
    /* .get_name             = */ dev_get_name,
    /* .get_description      = */ dev_get_description,
    /* .get_memory           = */ dev_get_memory,
    /* .get_type             = */ dev_get_type,
    /* .get_props            = */ dev_get_props,
    /* .init_backend         = */ dev_init_backend,
    /* .get_buffer_type      = */ dev_get_buffer_type,
    /* .get_host_buffer_type = */ nullptr,
    /* .buffer_from_host_ptr = */ nullptr,
    /* .supports_op          = */ dev_supports_op,
    /* .supports_buft        = */ dev_supports_buft,
    /* .offload_op           = */ dev_offload_op,
    /* .event_new            = */ nullptr,
    /* .event_free           = */ nullptr,
    /* .event_synchronize    = */ nullptr,
};

// ---- registration

const char* reg_get_name(ggml_backend_reg_t) {
    return reg_name;
}

std::atomic<unsigned> registries_made{0};

} // namespace

struct Registry::Impl {
    ggml_backend_reg reg{};
    std::unique_ptr<Device> device; // null: no device
    ggml_backend_dev_t dev_ptr = nullptr;
};

namespace {

size_t reg_get_device_count(ggml_backend_reg_t r) {
    return static_cast<Registry::Impl*>(r->context)->device ? 1 : 0;
}

ggml_backend_dev_t reg_get_device(ggml_backend_reg_t r, size_t i) {
    auto* impl = static_cast<Registry::Impl*>(r->context);
    return i == 0 ? impl->dev_ptr : nullptr;
}

const ggml_backend_reg_i reg_iface = {
    /* .get_name         = */ reg_get_name,
    /* .get_device_count = */ reg_get_device_count,
    /* .get_device       = */ reg_get_device,
    /* .get_proc_address = */ nullptr,
};

/// The largest buffer alignment taken from a host (ggml's backends ask 32 to 4096).
constexpr uint64_t max_alignment = uint64_t{1} << 20;

/// Reads what the device offers once; names and sizes do not change.
Expected<void> describe(Device& d) {
    Remote& r = *d.remote;
    auto count = r.device().count();
    if (!count) {
        Error e = std::move(count).error();
        if (e != Errc::forward_backend_error && e != Errc::forward_invalid_index)
            return Unexpected{std::move(e)};
        // The library loaded, but it does not answer ggml's command set as a ggml backend.
        return Unexpected{e.with_note(
            "the host's backend library refused ggml's first command (device_get_count): is "
            "it a ggml host backend (libggml-apir-host.so, ggml's libggml-virtgpu-backend.so)? "
            "Loopback: APIR_GGML_BACKEND_LIBRARY; vtest: the server's "
            "VIRGL_APIR_BACKEND_LIBRARY; a VM: the host's configuration")};
    }
    if (*count == 0) return fail(Errc::no_device, "the host's ggml backend has no device");
    if (*count > 1)
        d.log().info("the host has {} devices; ggml's command set reaches its first", *count);
    auto name = r.device().name();
    if (!name) return Unexpected{std::move(name).error()};
    auto desc = r.device().description();
    if (!desc) return Unexpected{std::move(desc).error()};
    auto type = r.device().type();
    if (!type) return Unexpected{std::move(type).error()};
    auto buft = r.device().buffer_type();
    if (!buft) return Unexpected{std::move(buft).error()};
    auto buft_name = r.device().buffer_type_name(*buft);
    if (!buft_name) return Unexpected{std::move(buft_name).error()};
    auto align = r.device().alignment(*buft);
    if (!align) return Unexpected{std::move(align).error()};
    auto max = r.device().max_size(*buft);
    if (!max) return Unexpected{std::move(max).error()};

    // ggml's allocator pads offsets to the alignment and splits buffers at max_size: a
    // huge alignment overflows its arithmetic, a max_size below the alignment fits nothing.
    if (*align > max_alignment)
        return fail(Errc::decode_bad_value,
                    fmt::format("buffer_type_get_alignment: alignment {} is above {}", *align,
                                max_alignment));
    if (*max < *align)
        return fail(Errc::decode_bad_value,
                    fmt::format("buffer_type_get_max_size: max size {} is below the alignment {}",
                                *max, *align));
    d.description = fmt::format("{} ({} over APIR {})", *desc, *name, r.transport_name());
    d.buft_name = fmt::format("{}:{}", d.name, *buft_name);
    // The host's memory is not in this process's address space: to ggml, a host CPU is
    // a discrete device (type GPU), so that schedulers offload to it.
    d.type = *type == ggml::DeviceType::cpu ? GGML_BACKEND_DEVICE_TYPE_GPU
                                            : static_cast<enum ggml_backend_dev_type>(*type);
    if (r.zero_copy_allowed()) {
        auto caps = r.device().capabilities();
        if (!caps && r.device().lost()) return Unexpected{std::move(caps).error()};
        if (!caps)
            d.log().info("no zero-copy buffers: the capability query failed: {}",
                         caps.error().message());
        d.zero_copy = caps && caps->zero_copy_buffers;
        d.log().info("{}", d.zero_copy ? "zero-copy buffers: the host offers them; tensor bytes "
                                         "move in shared memory without a call"
                                       : "no zero-copy buffers (the host does not offer them): "
                                         "every transfer is a call");
    }
    d.buft_handle = *buft;
    d.alignment = static_cast<size_t>(*align);
    d.max_size = static_cast<size_t>(std::min<uint64_t>(*max, SIZE_MAX));
    return {};
}

} // namespace

Registry::Registry(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {
    impl_->reg = ggml_backend_reg{GGML_BACKEND_API_VERSION, reg_iface, impl_.get()};
}
Registry::~Registry() = default;

ggml_backend_reg_t Registry::reg() noexcept {
    return &impl_->reg;
}
Remote* Registry::remote() noexcept {
    return impl_->device ? impl_->device->remote.get() : nullptr;
}

std::unique_ptr<Registry> Registry::empty() {
    return std::unique_ptr<Registry>(new Registry(std::make_unique<Impl>()));
}

Expected<std::unique_ptr<Registry>> Registry::create(std::unique_ptr<Remote> remote,
                                                     std::string device_name) {
    if (!remote) return fail(Errc::invalid_argument, "Registry::create: no Remote");
    if (auto c = remote->connect(); !c) return Unexpected{std::move(c).error()};
    auto impl = std::make_unique<Impl>();
    auto dev = std::make_unique<Device>();
    dev->remote = std::move(remote);
    dev->name = device_name.empty()
                    ? fmt::format("APIR{}", registries_made.fetch_add(1, std::memory_order_relaxed))
                    : std::move(device_name);
    if (auto r = describe(*dev); !r) return Unexpected{std::move(r).error()};
    auto reg = std::unique_ptr<Registry>(new Registry(std::move(impl)));
    Device* d = dev.get();
    d->dev = ggml_backend_device{device_iface, reg->reg(), d};
    d->buft = ggml_backend_buffer_type{buft_iface, &d->dev, d};
    reg->impl_->device = std::move(dev);
    reg->impl_->dev_ptr = &d->dev;
    return reg;
}

Expected<void> check_no_ggml_virtgpu_frontend() {
    // ggml registers its frontend whether or not it found a device; its context is its
    // connection to the device, null when it found none (ggml-virtgpu's registration).
    const ggml_backend_reg_t other = ggml_backend_reg_by_name(ggml_virtgpu_reg_name);
    if (other == nullptr || other->context == nullptr) return {};
    return fail(Errc::backend_already_initialized,
                "ggml's own virtio-gpu frontend (registration \"ggml-virtgpu\", in a ggml "
                "built with GGML_VIRTGPU=ON) already holds this VM's device, and two guests "
                "on one device conflict: use one of them (a ggml built without GGML_VIRTGPU "
                "for libggml-apir, or leave libggml-apir out of GGML_BACKEND_PATH and "
                "ggml_backend_load)");
}

std::string connect_hint(const Error& e) {
    if (e != Errc::backend_already_initialized) return {};
    return "the host's ggml backend was initialized by another guest first; in this process "
           "that is ggml's own virtio-gpu frontend if ggml was built with GGML_VIRTGPU=ON "
           "(docs/GGML-BACKEND.md, 'ggml's own frontend in the same process')";
}

Logger ggml_logger(LogLevel min) {
    return Logger(
        [](LogLevel l, std::string_view msg) {
            ggml_log_callback cb = nullptr;
            void* user = nullptr;
            ggml_log_get(&cb, &user);
            if (!cb) return;
            const ggml_log_level gl = l == LogLevel::debug  ? GGML_LOG_LEVEL_DEBUG
                                      : l == LogLevel::info ? GGML_LOG_LEVEL_INFO
                                      : l == LogLevel::warn ? GGML_LOG_LEVEL_WARN
                                                            : GGML_LOG_LEVEL_ERROR;
            const std::string line = fmt::format("apir: {}\n", msg);
            cb(gl, line.c_str(), user);
        },
        min);
}

} // namespace apir::ggml_remote

using namespace apir::ggml_remote;

extern "C" {

ggml_backend_reg_t ggml_backend_apir_reg(void) {
    // Process-wide and never destroyed, like ggml's own registrations: ggml keeps the
    // pointer until exit, and tearing the host down during exit would race other
    // libraries' destructors.
    static Registry* const registry = [] {
        auto config = config_from_environment();
        apir::Logger log = ggml_logger(config ? config->log_level : apir::LogLevel::warn);
        if (!config) {
            log.error("not connecting: {}", config.error().message());
            return Registry::empty().release();
        }
        if (config->transport == TransportKind::virtgpu) {
            if (auto c = check_no_ggml_virtgpu_frontend(); !c) {
                log.error("not connecting: {}", c.error().message());
                return Registry::empty().release();
            }
        }
        auto remote = Remote::open(*config, log);
        if (!remote) {
            log.error("not connecting: {}", remote.error().message());
            return Registry::empty().release();
        }
        auto reg = Registry::create(std::move(*remote), "APIR0");
        if (!reg) {
            log.error("not connecting: {}", reg.error().message());
            if (std::string hint = connect_hint(reg.error()); !hint.empty()) log.error("{}", hint);
            return Registry::empty().release();
        }
        return reg->release();
    }();
    return registry->reg();
}

bool ggml_backend_dev_is_apir(ggml_backend_dev_t dev) {
    return dev && dev->iface.get_name == device_iface.get_name;
}

GGML_BACKEND_API ggml_backend_reg_t ggml_backend_init(void) {
    return ggml_backend_apir_reg();
}

} // extern "C"
