#include "tensor_codec.hpp"

#include <cstddef>
#include <cstring>
#include <unordered_set>

#include <fmt/format.h>

namespace apir::ggml_remote {

namespace {

// The rpc tensor's C layout (PROTOCOL.md §7), filled field by field.
struct WireTensor {
    uint64_t id;
    uint32_t type;
    uint32_t pad0;
    uint64_t buffer;
    uint32_t ne[4];
    uint32_t nb[4];
    uint32_t op;
    int32_t op_params[16];
    int32_t flags;
    uint64_t src[10];
    uint64_t view_src;
    uint64_t view_offs;
    uint64_t data;
    char name[64];
    char pad1[4];
};
static_assert(sizeof(WireTensor) == rpc_tensor_size);
static_assert(offsetof(WireTensor, type) == 8);
static_assert(offsetof(WireTensor, buffer) == 16);
static_assert(offsetof(WireTensor, ne) == 24);
static_assert(offsetof(WireTensor, nb) == 40);
static_assert(offsetof(WireTensor, op) == 56);
static_assert(offsetof(WireTensor, op_params) == 60);
static_assert(offsetof(WireTensor, flags) == 124);
static_assert(offsetof(WireTensor, src) == 128);
static_assert(offsetof(WireTensor, view_src) == 208);
static_assert(offsetof(WireTensor, view_offs) == 216);
static_assert(offsetof(WireTensor, data) == 224);
static_assert(offsetof(WireTensor, name) == 232);
// ggml's limits must match the wire's arrays.
static_assert(GGML_MAX_DIMS == 4 && GGML_MAX_SRC == 10 && GGML_MAX_NAME == 64 &&
              GGML_MAX_OP_PARAMS == 64);

uint64_t id_of(const ggml_tensor* t) noexcept {
    return reinterpret_cast<uintptr_t>(t);
}

std::string tensor_label(const ggml_tensor* t) {
    return fmt::format("tensor '{}' ({} {})", t->name, ggml_op_desc(t), ggml_type_name(t->type));
}

} // namespace

const ggml_backend_buffer* tensor_buffer(const ggml_tensor* t) noexcept {
    return t->view_src ? t->view_src->buffer : t->buffer;
}

Expected<RpcTensor> encode_rpc_tensor(const ggml_tensor* t, const RemoteBuffer& buf) {
    WireTensor w{};
    if (t->type < 0 || t->type >= GGML_TYPE_COUNT)
        return fail(Errc::invalid_argument,
                    fmt::format("tensor type {}", static_cast<int>(t->type)));
    w.id = id_of(t);
    w.type = static_cast<uint32_t>(t->type);
    w.buffer = buf.handle;
    for (int i = 0; i < GGML_MAX_DIMS; ++i) {
        // The wire holds 32 bits of each; a larger tensor cannot travel faithfully.
        if (t->ne[i] < 0 || t->ne[i] > INT64_C(0xffffffff) || t->nb[i] > 0xffffffffu)
            return fail(Errc::invalid_argument,
                        fmt::format("{}: ne/nb past 32 bits do not fit ggml's rpc tensor",
                                    tensor_label(t)));
        w.ne[i] = static_cast<uint32_t>(t->ne[i]);
        w.nb[i] = static_cast<uint32_t>(t->nb[i]);
    }
    w.op = static_cast<uint32_t>(t->op);
    std::memcpy(w.op_params, t->op_params, sizeof w.op_params);
    w.flags = t->flags;
    for (int i = 0; i < GGML_MAX_SRC; ++i)
        w.src[i] = id_of(t->src[i]);
    w.view_src = id_of(t->view_src);
    w.view_offs = t->view_offs;
    if (t->data) {
        // ggml's host asserts (and aborts) unless the data lies inside the buffer.
        const auto addr = reinterpret_cast<uintptr_t>(t->data);
        const uint64_t n = ggml_nbytes(t);
        if (addr < buf.base || addr - buf.base > buf.size || n > buf.size - (addr - buf.base))
            return fail(Errc::invalid_argument,
                        fmt::format("{}: {} bytes at {:#x} are outside its buffer [{:#x}, +{})",
                                    tensor_label(t), n, addr, buf.base, buf.size));
        w.data = addr - buf.base;
    }
    std::memcpy(w.name, t->name, sizeof w.name - 1);
    RpcTensor out;
    std::memcpy(out.data(), &w, sizeof w);
    return out;
}

Expected<void> GraphEncoding::build(ggml_cgraph* graph, const BufferResolver& resolve) {
    nodes_.clear();
    tensors_.clear();
    const int n = ggml_graph_n_nodes(graph);
    if (n < 0) return fail(Errc::invalid_argument, "graph with a negative node count");
    nodes_.reserve(static_cast<size_t>(n));

    // Every tensor once, sources before users; iterative so that a deep graph cannot
    // exhaust the stack.
    std::unordered_set<const ggml_tensor*> seen;
    std::vector<std::pair<const ggml_tensor*, int>> stack; // tensor, next edge to visit
    auto add = [&](const ggml_tensor* root) -> Expected<void> {
        if (!root || !seen.insert(root).second) return {};
        stack.emplace_back(root, 0);
        while (!stack.empty()) {
            auto& [t, edge] = stack.back();
            if (edge <= GGML_MAX_SRC) {
                const ggml_tensor* next = edge < GGML_MAX_SRC ? t->src[edge] : t->view_src;
                ++edge;
                if (next && seen.insert(next).second) stack.emplace_back(next, 0);
                continue;
            }
            const ggml_tensor* done = t;
            stack.pop_back();
            if (!done->data)
                return fail(Errc::invalid_argument,
                            fmt::format("{} has no data (not allocated)", tensor_label(done)));
            const RemoteBuffer* rb = resolve(tensor_buffer(done));
            if (!rb)
                return fail(Errc::invalid_argument,
                            fmt::format("{} lives in a buffer that is not this device's ({})",
                                        tensor_label(done),
                                        tensor_buffer(done) ? "another device" : "no buffer"));
            auto rt = encode_rpc_tensor(done, *rb);
            if (!rt) return Unexpected{std::move(rt).error()};
            tensors_.push_back(*rt);
        }
        return {};
    };
    for (int i = 0; i < n; ++i) {
        const ggml_tensor* node = ggml_graph_node(graph, i);
        if (!node) return fail(Errc::invalid_argument, fmt::format("graph node {} is null", i));
        nodes_.push_back(id_of(node));
        if (auto r = add(node); !r) return r;
    }
    if (tensors_.size() > UINT32_MAX) return fail(Errc::invalid_argument, "graph too large");
    return {};
}

void GraphEncoding::write(std::span<std::byte> out) const noexcept {
    std::byte* p = out.data();
    auto put = [&](const void* src, size_t n) {
        std::memcpy(p, src, n);
        p += n;
    };
    const auto n_nodes = static_cast<uint32_t>(nodes_.size());
    const auto n_tensors = static_cast<uint32_t>(tensors_.size());
    put(&n_nodes, 4);
    if (n_nodes) put(nodes_.data(), 8 * nodes_.size());
    put(&n_tensors, 4);
    if (n_tensors) put(tensors_.data(), rpc_tensor_size * tensors_.size());
}

std::vector<std::byte> encode_inline_tensor(const ggml_tensor* op, const BufferResolver& resolve) {
    // A dependent tensor keeps its shape, type and op, never a pointer into the guest.
    auto detached = [](const ggml_tensor* t) {
        ggml_tensor c;
        std::memcpy(&c, t, sizeof c);
        c.buffer = nullptr;
        c.view_src = nullptr;
        for (auto& s : c.src)
            s = nullptr;
        c.extra = nullptr;
        return c;
    };
    ggml_tensor head;
    std::memcpy(&head, op, sizeof head);
    head.extra = nullptr;
    const RemoteBuffer* rb = op->buffer ? resolve(op->buffer) : nullptr;
    head.buffer = rb ? op->buffer : nullptr; // non-null: the host reads a handle next
    // The host maps sources until the first absent one; later ones cannot travel.
    int n_src = 0;
    while (n_src < GGML_MAX_SRC && op->src[n_src])
        ++n_src;
    for (int i = n_src; i < GGML_MAX_SRC; ++i)
        head.src[i] = nullptr;

    std::vector<std::byte> out;
    out.reserve(sizeof(ggml_tensor) * (2 + static_cast<size_t>(n_src)) + 8);
    auto put = [&](const void* p, size_t n) {
        const auto* b = static_cast<const std::byte*>(p);
        out.insert(out.end(), b, b + n);
    };
    put(&head, sizeof head);
    if (rb) put(&rb->handle, sizeof rb->handle);
    if (op->view_src) {
        ggml_tensor v = detached(op->view_src);
        put(&v, sizeof v);
    }
    for (int i = 0; i < n_src; ++i) {
        ggml_tensor s = detached(op->src[i]);
        put(&s, sizeof s);
    }
    return out;
}

} // namespace apir::ggml_remote
