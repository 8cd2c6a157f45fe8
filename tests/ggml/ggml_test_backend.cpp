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
//   slow_name         device_get_name sleeps 500 ms first
#include <apir/backend.hpp>
#include <apir/ggml/commands.hpp>
#include <apir/ggml/graph.hpp>

#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

namespace {

using namespace apir::ggml;

constexpr uint32_t refused = 1;

struct TestBuffer {
    std::unique_ptr<std::byte[]> owned; // null for host-pointer buffers
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

struct Context {
    virgl_apir_callbacks* cbs = nullptr;
    apir_get_shmem_sized_fn shmem_sized = nullptr;
    std::string hostile;
    std::map<uint64_t, std::unique_ptr<TestBuffer>> buffers;
    uint64_t first_buffer = 0; // duplicate_buffer answers this one again
};

std::mutex g_mu;
std::unordered_map<uint32_t, Context> g_contexts;

bool known_type(uint64_t h) {
    return h == handle_of(&g_default_type) || h == handle_of(&g_host_ptr_type);
}

std::span<std::byte> shmem(Context& c, uint32_t ctx_id, uint32_t res, uint64_t size) {
    return apir::resolve_shmem_range(c.shmem_sized, ctx_id, res, 0, size);
}

// The tensor's bytes [offset, offset + size) in its buffer, or empty when outside.
std::span<std::byte> tensor_bytes(Context& c, const RpcTensor& t, uint64_t offset, uint64_t size) {
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
Status compute(Context& c, const DecodedGraph& g) {
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

uint32_t dispatch(Context& c, uint32_t ctx_id, uint32_t cmd, apir::Decoder& d, apir::Encoder& e) {
    const std::string& h = c.hostile;
    if (h == "refuse") return refused;
    switch (static_cast<Command>(cmd)) {
    case Command::device_get_device_count:
        e.put(int32_t{1});
        return 0;
    case Command::device_get_count:
        e.put(int32_t{h == "negative_count" ? -1 : 1});
        return 0;
    case Command::device_get_name:
        if (h == "slow_name") std::this_thread::sleep_for(std::chrono::milliseconds(500));
        put_string(e, "apir-test", h != "no_nul");
        return 0;
    case Command::device_get_description:
        put_string(e, "apir test ggml device", true);
        return 0;
    case Command::device_get_type:
        e.put(uint32_t{h == "bad_type" ? 9u : 0u});
        return 0;
    case Command::device_get_memory:
        e.put(MemoryReply{h == "memory_inverted" ? uint64_t{3} << 30 : uint64_t{1} << 30,
                          uint64_t{2} << 30});
        return 0;
    case Command::device_get_buffer_type:
        e.write_u64(h == "null_buffer_type" ? 0 : handle_of(&g_default_type));
        return 0;
    case Command::device_get_props:
        e.put(PropsReply{0, 0, static_cast<uint8_t>(h == "bad_bool" ? 2 : 1), 0, 0});
        return 0;
    case Command::device_buffer_from_ptr: {
        BufferFromPtrRequest req;
        if (!d.get_into(req)) return refused;
        auto mem = shmem(c, ctx_id, req.res_id, req.size);
        if (mem.empty()) return refused;
        auto b = std::make_unique<TestBuffer>();
        b->base = mem.data();
        b->size = req.size;
        uint64_t handle = handle_of(b.get());
        c.buffers.emplace(handle, std::move(b));
        e.write_u64(handle);
        e.write_u64(handle_of(&g_host_ptr_type));
        return 0;
    }
    case Command::buffer_type_get_name:
    case Command::buffer_type_get_alignment:
    case Command::buffer_type_get_max_size:
    case Command::buffer_type_is_host: {
        uint64_t t = d.read_u64();
        if (!d.ok() || !known_type(t)) return refused;
        const auto* bt = reinterpret_cast<const TestBufferType*>(static_cast<uintptr_t>(t));
        if (cmd == static_cast<uint32_t>(Command::buffer_type_get_name))
            put_string(e, bt->name, true);
        else if (cmd == static_cast<uint32_t>(Command::buffer_type_get_alignment))
            e.write_u64(h == "bad_alignment" ? 24 : 32);
        else if (cmd == static_cast<uint32_t>(Command::buffer_type_get_max_size))
            e.write_u64(UINT64_MAX);
        else
            e.put(false);
        return 0;
    }
    case Command::buffer_type_alloc_buffer: {
        uint64_t t = d.read_u64();
        uint64_t size = d.read_u64();
        if (!d.ok() || !known_type(t)) return refused;
        if (h == "null_buffer" || size > (uint64_t{1} << 32)) {
            e.write_u64(0);
            return 0;
        }
        if (h == "duplicate_buffer" && c.first_buffer != 0) {
            e.write_u64(c.first_buffer);
            return 0;
        }
        auto b = std::make_unique<TestBuffer>();
        b->owned = std::make_unique<std::byte[]>(std::max<uint64_t>(size, 1));
        b->base = b->owned.get();
        b->size = size;
        uint64_t handle = handle_of(b.get());
        c.buffers.emplace(handle, std::move(b));
        if (c.first_buffer == 0) c.first_buffer = handle;
        e.write_u64(handle);
        return 0;
    }
    case Command::buffer_get_base: {
        auto it = c.buffers.find(d.read_u64());
        if (!d.ok() || it == c.buffers.end()) return refused;
        e.write_u64(h == "base_zero" ? 0 : handle_of(it->second->base));
        return 0;
    }
    case Command::buffer_set_tensor:
    case Command::buffer_get_tensor: {
        TensorTransferRequest req;
        if (!d.get_into(req) || !c.buffers.contains(req.buffer.value())) return refused;
        auto dst = tensor_bytes(c, req.tensor, req.offset, req.size);
        auto blob = shmem(c, ctx_id, req.res_id, req.size);
        if (req.size != 0 && (dst.empty() || blob.empty())) return refused;
        if (req.size == 0) return 0;
        if (cmd == static_cast<uint32_t>(Command::buffer_set_tensor))
            std::memcpy(dst.data(), blob.data(), blob.size());
        else
            std::memcpy(blob.data(), dst.data(), dst.size());
        return 0;
    }
    case Command::buffer_cpy_tensor: {
        CopyTensorRequest req;
        if (!d.get_into(req) || !c.buffers.contains(req.buffer.value())) return refused;
        auto n = nbytes(req.src);
        if (!n) return refused;
        auto from = tensor_bytes(c, req.src, 0, *n);
        auto to = tensor_bytes(c, req.dst, 0, *n);
        if (*n != 0 && (from.empty() || to.empty())) return refused;
        if (*n) std::memmove(to.data(), from.data(), from.size());
        e.write_u32(h == "bad_bool" ? 2 : 1);
        return 0;
    }
    case Command::buffer_clear: {
        ClearRequest req;
        if (!d.get_into(req)) return refused;
        auto it = c.buffers.find(req.buffer.value());
        if (it == c.buffers.end()) return refused;
        if (it->second->size) std::memset(it->second->base, req.value, it->second->size);
        return 0;
    }
    case Command::buffer_free_buffer: {
        uint64_t b = d.read_u64();
        if (!d.ok() || c.buffers.erase(b) == 0) return refused;
        return 0;
    }
    case Command::backend_graph_compute: {
        GraphComputeRequest req;
        if (!d.get_into(req) || req.size == 0) return refused;
        auto blob = shmem(c, ctx_id, req.res_id, req.size);
        if (blob.empty()) return refused;
        auto g = decode_graph(blob);
        if (!g) return refused;
        for (const RpcTensor& t : g->tensors)
            if (t.buffer && !c.buffers.contains(t.buffer.value())) return refused;
        Status s = compute(c, *g);
        if (h == "bad_status") s = static_cast<Status>(7);
        if (h == "status_failed") s = Status::failed;
        e.put(static_cast<int32_t>(s));
        return 0;
    }
    case Command::device_supports_op:
    case Command::buffer_type_get_alloc_size:
        // Their request is ggml's raw tensor, whose layout this backend does not know.
        return refused;
    }
    return apir::forward_invalid_index;
}

} // namespace

extern "C" {

__attribute__((visibility("default"))) void
apir_backend_set_shmem_sized(uint32_t ctx_id, apir_get_shmem_sized_fn fn) {
    std::lock_guard lk(g_mu);
    g_contexts[ctx_id].shmem_sized = fn;
}

__attribute__((visibility("default"))) uint32_t apir_backend_initialize(uint32_t ctx_id,
                                                                        virgl_apir_callbacks* cbs) {
    if (!cbs || !cbs->get_config || !cbs->get_shmem_ptr) return 6 + 5;
    std::lock_guard lk(g_mu);
    Context& c = g_contexts[ctx_id];
    c.cbs = cbs;
    const char* hostile = cbs->get_config(ctx_id, "ggml.test.hostile");
    c.hostile = hostile ? hostile : "";
    return 6;
}

__attribute__((visibility("default"))) void apir_backend_deinit(uint32_t ctx_id) {
    std::lock_guard lk(g_mu);
    g_contexts.erase(ctx_id);
}

__attribute__((visibility("default"))) uint32_t
apir_backend_dispatcher(uint32_t ctx_id, virgl_apir_callbacks*, uint32_t cmd, char* dec_cur,
                        const char* dec_end, char* enc_cur, const char* enc_end,
                        char** enc_cur_after) {
    apir::BackendFrame f(dec_cur, dec_end, enc_cur, enc_end, enc_cur_after);
    if (cmd >= command_count) return apir::forward_invalid_index;
    std::lock_guard lk(g_mu);
    auto it = g_contexts.find(ctx_id);
    if (it == g_contexts.end()) return refused;
    uint32_t r = dispatch(it->second, ctx_id, cmd, f.request(), f.reply());
    if (r != 0) return r;
    return f.finish(refused);
}
}
