// A test APIR backend library that answers ggml's command set (PROTOCOL.md §7) the way
// ggml's host backend does, over its own memory: buffers are heap blocks, handles their
// addresses. It computes ADD and MUL_MAT of contiguous f32 tensors. Unlike ggml's host it
// checks everything (unknown buffer types too) and refuses with 1.
//
// Configuration key ggml.test.hostile makes it misbehave, to test the guest's checks:
//   null_buffer_type  device_get_buffer_type answers a null handle
//   null_buffer       buffer_type_alloc_buffer answers a null handle (allocation failed)
//   duplicate_buffer  buffer_type_alloc_buffer answers the same handle every time
//   base_zero         buffer_get_base answers 0
//   no_nul            device_get_name answers a string without its NUL
//   bad_status        backend_graph_compute answers ggml_status 7
//   status_failed     backend_graph_compute answers GGML_STATUS_FAILED
//   bad_type          device_get_type answers 9
//   bad_bool          buffer_cpy_tensor and device_get_props answer bool 2
//   memory_inverted   device_get_memory answers free > total
//   bad_alignment     buffer_type_get_alignment answers 24
//   negative_count    device_get_count answers -1
//   refuse            every command returns 1 (the host refused)
//   slow_name         device_get_name sleeps 1500 ms first
//   slow_memory       device_get_memory sleeps 600 ms first
//   slow_compute      backend_graph_compute sleeps 600 ms first (a long legitimate graph)
//   refuse_bad_set    buffer_set_tensor refuses tensors whose name starts with "bad"
//   base_unaligned    buffer_get_base answers the base + 1 (not aligned to 32)
//   base_wraps        buffer_get_base answers 0xffffffffffffff00 (base + size wraps)
//   alignment_huge    buffer_type_get_alignment answers 2^40
//   max_size_small    buffer_type_get_max_size answers 16 (below the alignment)
#include <apir/backend.hpp>
#include <apir/ggml/commands.hpp>
#include <apir/ggml/graph.hpp>

#include <chrono>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <thread>
#include <vector>

namespace {

using namespace apir::ggml;

constexpr uint32_t refused = 1;

// Blocks aligned to the alignment the buffer type claims (32), as ggml's allocator needs.
constexpr std::align_val_t block_alignment{32};
struct AlignedDelete {
    void operator()(std::byte* p) const noexcept { ::operator delete[](p, block_alignment); }
};

struct TestBuffer {
    std::unique_ptr<std::byte[], AlignedDelete> owned; // null for host-pointer buffers
    std::byte* base = nullptr;
    uint64_t size = 0;
};

// Distinct addresses that serve as buffer-type handles.
struct TestBufferType {
    const char* name;
};
TestBufferType g_default_type{"TEST"};
TestBufferType g_host_ptr_type{"TEST_HOST_PTR"};

uint64_t handle_of(const void* p) {
    return reinterpret_cast<uintptr_t>(p);
}

struct State {
    // Only the sized look-up resolves: every range is checked. Reads ggml.test.hostile.
    template <class C>
    bool open(C& c) {
        c.shmem.unsized = nullptr;
        const char* h = c.config("ggml.test.hostile");
        hostile = h ? h : "";
        return true;
    }
    std::string hostile;
    std::map<uint64_t, std::unique_ptr<TestBuffer>> buffers;
    uint64_t first_buffer = 0; // duplicate_buffer answers this one again
};
using Contexts = apir::ContextRegistry<State>;
using Context = Contexts::Context;
Contexts g_contexts;

bool known_type(uint64_t h) {
    return h == handle_of(&g_default_type) || h == handle_of(&g_host_ptr_type);
}

// Only the sized look-up resolves (initialize drops get_shmem_ptr): every range is checked.
std::span<std::byte> shmem(const Context& c, uint32_t res, uint64_t size) {
    return c.resolve(res, 0, size);
}

// The tensor's bytes [offset, offset + size) in its buffer, or empty when outside.
std::span<std::byte> tensor_bytes(State& c, const RpcTensor& t, uint64_t offset, uint64_t size) {
    auto it = c.buffers.find(t.buffer.value());
    if (it == c.buffers.end()) return {};
    auto n = nbytes(t);
    if (!n || offset > *n || size > *n - offset) return {};
    const TestBuffer& b = *it->second;
    if (t.data > b.size || *n > b.size - t.data) return {};
    return {b.base + t.data + offset, static_cast<size_t>(size)};
}

bool contiguous_f32(const RpcTensor& t) {
    RpcTensor c = make_tensor(Type::f32, {t.ne[0], t.ne[1], t.ne[2], t.ne[3]});
    return t.type == static_cast<uint32_t>(Type::f32) && t.nb == c.nb;
}

// Computes the graph's nodes; a node it cannot compute aborts (like ggml's supports_op).
Status compute(State& c, const DecodedGraph& g) {
    std::unordered_map<uint64_t, const RpcTensor*> by_id;
    for (const RpcTensor& t : g.tensors)
        by_id[t.id] = &t;
    for (uint64_t id : g.nodes) {
        const RpcTensor& out = *by_id.at(id);
        if ((out.flags & flag_compute) == 0) continue;
        const RpcTensor* a = out.src[0] ? by_id.at(out.src[0]) : nullptr;
        const RpcTensor* b = out.src[1] ? by_id.at(out.src[1]) : nullptr;
        if (!a || !b || !contiguous_f32(out) || !contiguous_f32(*a) || !contiguous_f32(*b))
            return Status::aborted;
        auto bytes = [&](const RpcTensor& t) {
            auto n = nbytes(t);
            return n ? tensor_bytes(c, t, 0, *n) : std::span<std::byte>{};
        };
        auto so = bytes(out), sa = bytes(*a), sb = bytes(*b);
        if (so.empty() || sa.empty() || sb.empty()) return Status::failed;
        auto* o = reinterpret_cast<float*>(so.data());
        const auto* x = reinterpret_cast<const float*>(sa.data());
        const auto* y = reinterpret_cast<const float*>(sb.data());
        if (out.op == static_cast<uint32_t>(Op::add)) {
            if (a->ne != out.ne || b->ne != out.ne) return Status::aborted;
            for (size_t i = 0; i < so.size() / 4; ++i)
                o[i] = x[i] + y[i];
        } else if (out.op == static_cast<uint32_t>(Op::mul_mat)) {
            // ggml: a is [K, M], b is [K, N], out is [M, N]; out[n][m] = sum_k a[m][k] b[n][k].
            const uint32_t k = a->ne[0], m = a->ne[1], n = b->ne[1];
            if (b->ne[0] != k || out.ne[0] != m || out.ne[1] != n) return Status::aborted;
            for (uint32_t j = 0; j < n; ++j)
                for (uint32_t i = 0; i < m; ++i) {
                    float s = 0;
                    for (uint32_t l = 0; l < k; ++l)
                        s += x[i * k + l] * y[j * k + l];
                    o[j * m + i] = s;
                }
        } else {
            return Status::aborted;
        }
    }
    return Status::success;
}

void put_string(apir::Encoder& e, std::string_view s, bool with_nul) {
    if (with_nul) {
        e.put(s);
        return;
    }
    e.write_u64(s.size());
    e.write_bytes(s.data(), s.size());
}

// The handlers of ggml's commands, as ggml's host backend answers them (0: the reply is
// complete; `refused` otherwise). Each returns what its case of ggml's dispatcher would.
using Frame = apir::BackendFrame;

const std::string& hostile(const Context& c) {
    return c.state.hostile;
}

uint32_t device_get_device_count(Context&, Frame& f) {
    f.reply().put(int32_t{1});
    return 0;
}
uint32_t device_get_count(Context& c, Frame& f) {
    f.reply().put(int32_t{hostile(c) == "negative_count" ? -1 : 1});
    return 0;
}
uint32_t device_get_name(Context& c, Frame& f) {
    if (hostile(c) == "slow_name") std::this_thread::sleep_for(std::chrono::milliseconds(1500));
    put_string(f.reply(), "apir-test", hostile(c) != "no_nul");
    return 0;
}
uint32_t device_get_description(Context&, Frame& f) {
    put_string(f.reply(), "apir test ggml device", true);
    return 0;
}
uint32_t device_get_type(Context& c, Frame& f) {
    f.reply().put(uint32_t{hostile(c) == "bad_type" ? 9u : 0u});
    return 0;
}
uint32_t device_get_memory(Context& c, Frame& f) {
    if (hostile(c) == "slow_memory") std::this_thread::sleep_for(std::chrono::milliseconds(600));
    f.reply().put(
        MemoryReply{hostile(c) == "memory_inverted" ? uint64_t{3} << 30 : uint64_t{1} << 30,
                    uint64_t{2} << 30});
    return 0;
}
uint32_t device_get_buffer_type(Context& c, Frame& f) {
    f.reply().write_u64(hostile(c) == "null_buffer_type" ? 0 : handle_of(&g_default_type));
    return 0;
}
uint32_t device_get_props(Context& c, Frame& f) {
    f.reply().put(PropsReply{0, 0, static_cast<uint8_t>(hostile(c) == "bad_bool" ? 2 : 1), 0, 0});
    return 0;
}
uint32_t device_buffer_from_ptr(Context& c, Frame& f) {
    BufferFromPtrRequest req;
    if (!f.request().get_into(req)) return refused;
    auto mem = shmem(c, req.res_id, req.size);
    if (mem.empty()) return refused;
    auto b = std::make_unique<TestBuffer>();
    b->base = mem.data();
    b->size = req.size;
    uint64_t handle = handle_of(b.get());
    c.state.buffers.emplace(handle, std::move(b));
    f.reply().write_u64(handle);
    f.reply().write_u64(handle_of(&g_host_ptr_type));
    return 0;
}

// The buffer type a request names, or null when it names none of ours.
const TestBufferType* buffer_type(Frame& f) {
    uint64_t t = f.request().read_u64();
    if (!f.request().ok() || !known_type(t)) return nullptr;
    return reinterpret_cast<const TestBufferType*>(static_cast<uintptr_t>(t));
}
uint32_t buffer_type_get_name(Context&, Frame& f) {
    const TestBufferType* bt = buffer_type(f);
    if (!bt) return refused;
    put_string(f.reply(), bt->name, true);
    return 0;
}
uint32_t buffer_type_get_alignment(Context& c, Frame& f) {
    if (!buffer_type(f)) return refused;
    f.reply().write_u64(hostile(c) == "bad_alignment"    ? 24
                        : hostile(c) == "alignment_huge" ? uint64_t{1} << 40
                                                         : 32);
    return 0;
}
uint32_t buffer_type_get_max_size(Context& c, Frame& f) {
    if (!buffer_type(f)) return refused;
    f.reply().write_u64(hostile(c) == "max_size_small" ? 16 : UINT64_MAX);
    return 0;
}
uint32_t buffer_type_is_host(Context&, Frame& f) {
    if (!buffer_type(f)) return refused;
    f.reply().put(false);
    return 0;
}
uint32_t buffer_type_alloc_buffer(Context& c, Frame& f) {
    apir::Decoder& d = f.request();
    uint64_t t = d.read_u64();
    uint64_t size = d.read_u64();
    if (!d.ok() || !known_type(t)) return refused;
    State& s = c.state;
    if (hostile(c) == "null_buffer" || size > (uint64_t{1} << 32)) {
        f.reply().write_u64(0);
        return 0;
    }
    if (hostile(c) == "duplicate_buffer" && s.first_buffer != 0) {
        f.reply().write_u64(s.first_buffer);
        return 0;
    }
    auto b = std::make_unique<TestBuffer>();
    const size_t n = static_cast<size_t>(std::max<uint64_t>(size, 1));
    b->owned.reset(static_cast<std::byte*>(::operator new[](n, block_alignment)));
    std::memset(b->owned.get(), 0, n);
    b->base = b->owned.get();
    b->size = size;
    uint64_t handle = handle_of(b.get());
    s.buffers.emplace(handle, std::move(b));
    if (s.first_buffer == 0) s.first_buffer = handle;
    f.reply().write_u64(handle);
    return 0;
}
uint32_t buffer_get_base(Context& c, Frame& f) {
    auto it = c.state.buffers.find(f.request().read_u64());
    if (!f.request().ok() || it == c.state.buffers.end()) return refused;
    uint64_t base = handle_of(it->second->base);
    if (hostile(c) == "base_zero") base = 0;
    if (hostile(c) == "base_unaligned") base += 1;
    if (hostile(c) == "base_wraps") base = 0xffffffffffffff00;
    f.reply().write_u64(base);
    return 0;
}
// set_tensor (to_tensor) and get_tensor: one copy between the blob and the tensor.
uint32_t transfer(Context& c, Frame& f, bool to_tensor) {
    TensorTransferRequest req;
    if (!f.request().get_into(req) || !c.state.buffers.contains(req.buffer.value())) return refused;
    auto dst = tensor_bytes(c.state, req.tensor, req.offset, req.size);
    auto blob = shmem(c, req.res_id, req.size);
    if (req.size != 0 && (dst.empty() || blob.empty())) return refused;
    if (req.size == 0) return 0;
    if (to_tensor)
        std::memcpy(dst.data(), blob.data(), blob.size());
    else
        std::memcpy(blob.data(), dst.data(), dst.size());
    return 0;
}
uint32_t buffer_set_tensor(Context& c, Frame& f) {
    if (hostile(c) == "refuse_bad_set") {
        apir::Decoder peek = f.request();
        TensorTransferRequest req;
        if (peek.get_into(req) && std::string_view(req.tensor.name.data()).starts_with("bad"))
            return refused;
    }
    return transfer(c, f, true);
}
uint32_t buffer_get_tensor(Context& c, Frame& f) {
    return transfer(c, f, false);
}
uint32_t buffer_cpy_tensor(Context& c, Frame& f) {
    CopyTensorRequest req;
    if (!f.request().get_into(req) || !c.state.buffers.contains(req.buffer.value())) return refused;
    auto n = nbytes(req.src);
    if (!n) return refused;
    auto from = tensor_bytes(c.state, req.src, 0, *n);
    auto to = tensor_bytes(c.state, req.dst, 0, *n);
    if (*n != 0 && (from.empty() || to.empty())) return refused;
    if (*n) std::memmove(to.data(), from.data(), from.size());
    f.reply().write_u32(hostile(c) == "bad_bool" ? 2 : 1);
    return 0;
}
uint32_t buffer_clear(Context& c, Frame& f) {
    ClearRequest req;
    if (!f.request().get_into(req)) return refused;
    auto it = c.state.buffers.find(req.buffer.value());
    if (it == c.state.buffers.end()) return refused;
    if (it->second->size) std::memset(it->second->base, req.value, it->second->size);
    return 0;
}
uint32_t buffer_free_buffer(Context& c, Frame& f) {
    uint64_t b = f.request().read_u64();
    if (!f.request().ok() || c.state.buffers.erase(b) == 0) return refused;
    return 0;
}
uint32_t backend_graph_compute(Context& c, Frame& f) {
    if (hostile(c) == "slow_compute") std::this_thread::sleep_for(std::chrono::milliseconds(600));
    GraphComputeRequest req;
    if (!f.request().get_into(req) || req.size == 0) return refused;
    auto blob = shmem(c, req.res_id, req.size);
    if (blob.empty()) return refused;
    auto g = decode_graph(blob);
    if (!g) return refused;
    for (const RpcTensor& t : g->tensors)
        if (t.buffer && !c.state.buffers.contains(t.buffer.value())) return refused;
    Status s = compute(c.state, *g);
    if (hostile(c) == "bad_status") s = static_cast<Status>(7);
    if (hostile(c) == "status_failed") s = Status::failed;
    f.reply().put(static_cast<int32_t>(s));
    return 0;
}
// supports_op and get_alloc_size: their request is ggml's raw tensor, whose layout this
// backend does not know.
uint32_t raw_tensor_request(Context&, Frame&) {
    return refused;
}

constexpr uint32_t id(Command c) {
    return static_cast<uint32_t>(c);
}

constexpr auto g_table = [] {
    using C = Command;
    apir::DispatchTable<Context, command_count> t(
        {.reply_overflow = refused, .no_context = refused});
    t.on(id(C::device_get_device_count), &device_get_device_count)
        .on(id(C::device_get_count), &device_get_count)
        .on(id(C::device_get_name), &device_get_name)
        .on(id(C::device_get_description), &device_get_description)
        .on(id(C::device_get_type), &device_get_type)
        .on(id(C::device_get_memory), &device_get_memory)
        .on(id(C::device_supports_op), &raw_tensor_request)
        .on(id(C::device_get_buffer_type), &device_get_buffer_type)
        .on(id(C::device_get_props), &device_get_props)
        .on(id(C::device_buffer_from_ptr), &device_buffer_from_ptr)
        .on(id(C::buffer_type_get_name), &buffer_type_get_name)
        .on(id(C::buffer_type_get_alignment), &buffer_type_get_alignment)
        .on(id(C::buffer_type_get_max_size), &buffer_type_get_max_size)
        .on(id(C::buffer_type_is_host), &buffer_type_is_host)
        .on(id(C::buffer_type_alloc_buffer), &buffer_type_alloc_buffer)
        .on(id(C::buffer_type_get_alloc_size), &raw_tensor_request)
        .on(id(C::buffer_get_base), &buffer_get_base)
        .on(id(C::buffer_set_tensor), &buffer_set_tensor)
        .on(id(C::buffer_get_tensor), &buffer_get_tensor)
        .on(id(C::buffer_cpy_tensor), &buffer_cpy_tensor)
        .on(id(C::buffer_clear), &buffer_clear)
        .on(id(C::buffer_free_buffer), &buffer_free_buffer)
        .on(id(C::backend_graph_compute), &backend_graph_compute);
    return t;
}();

} // namespace

APIR_BACKEND_CONTEXT_ENTRY_POINTS(g_contexts)

APIR_BACKEND_ENTRY uint32_t apir_backend_dispatcher(uint32_t ctx_id, virgl_apir_callbacks*,
                                                    uint32_t cmd, char* dec_cur,
                                                    const char* dec_end, char* enc_cur,
                                                    const char* enc_end, char** enc_cur_after) {
    apir::BackendFrame f(dec_cur, dec_end, enc_cur, enc_end, enc_cur_after);
    Context* c = g_contexts.find(ctx_id);
    if (cmd < command_count && c && c->state.hostile == "refuse") return refused;
    return g_table.dispatch(c, cmd, f);
}
