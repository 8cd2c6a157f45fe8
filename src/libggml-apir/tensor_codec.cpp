#include "tensor_codec.hpp"

#include <algorithm>
#include <cstring>
#include <unordered_set>

#include <fmt/format.h>

namespace apir::ggml_remote {

namespace {

uint64_t id_of(const ggml_tensor* t) noexcept {
    return reinterpret_cast<uintptr_t>(t);
}
const ggml_tensor* tensor_of(uint64_t id) noexcept {
    return reinterpret_cast<const ggml_tensor*>(static_cast<uintptr_t>(id));
}

std::string tensor_label(const ggml_tensor* t) {
    return fmt::format("tensor '{}' ({} {})", t->name, ggml_op_desc(t), ggml_type_name(t->type));
}

// ggml's host aborts on an op it does not know, calls the guest's function pointers of a
// custom op, and indexes tables with the unary and GLU sub-ops.
Expected<void> check_op(const ggml_tensor* t) {
    if (t->op < 0 || t->op >= GGML_OP_COUNT || !ggml::op_runnable(static_cast<uint32_t>(t->op)))
        return fail(Errc::invalid_argument,
                    fmt::format("tensor '{}' has op {}, which ggml's host cannot run", t->name,
                                static_cast<int>(t->op)));
    if (t->op == GGML_OP_UNARY &&
        (ggml_get_unary_op(t) < 0 || ggml_get_unary_op(t) >= GGML_UNARY_OP_COUNT))
        return fail(Errc::invalid_argument, fmt::format("tensor '{}' has unary op {}", t->name,
                                                        static_cast<int>(ggml_get_unary_op(t))));
    if (t->op == GGML_OP_GLU && (ggml_get_glu_op(t) < 0 || ggml_get_glu_op(t) >= GGML_GLU_OP_COUNT))
        return fail(Errc::invalid_argument, fmt::format("tensor '{}' has GLU op {}", t->name,
                                                        static_cast<int>(ggml_get_glu_op(t))));
    return {};
}

static_assert(ggml::op_count == GGML_OP_COUNT, "apir/ggml's op count is ggml's");
static_assert(static_cast<int>(ggml::Op::map_custom1) == GGML_OP_MAP_CUSTOM1 &&
              static_cast<int>(ggml::Op::custom) == GGML_OP_CUSTOM);

} // namespace

Expected<uint64_t> tensor_nbytes(const ggml_tensor* t) {
    for (int i = 0; i < GGML_MAX_DIMS; ++i) {
        if (t->ne[i] < 0)
            return fail(Errc::invalid_argument,
                        fmt::format("{}: negative dimension", tensor_label(t)));
        if (t->ne[i] == 0) return uint64_t{0};
    }
    const uint64_t blck = ggml_blck_size(t->type);
    if (blck == 0)
        return fail(Errc::invalid_argument, fmt::format("{}: block size 0", tensor_label(t)));
    // ggml_nbytes' formula, every product and sum checked.
    uint64_t total = 0, term = 0;
    bool wrapped = false;
    auto add = [&](uint64_t a, uint64_t b) {
        wrapped |= __builtin_mul_overflow(a, b, &term);
        wrapped |= __builtin_add_overflow(total, term, &total);
    };
    if (blck == 1) {
        total = ggml_type_size(t->type);
        for (int i = 0; i < GGML_MAX_DIMS; ++i)
            add(static_cast<uint64_t>(t->ne[i] - 1), t->nb[i]);
    } else {
        add(static_cast<uint64_t>(t->ne[0]), t->nb[0]);
        total /= blck;
        for (int i = 1; i < GGML_MAX_DIMS; ++i)
            add(static_cast<uint64_t>(t->ne[i] - 1), t->nb[i]);
    }
    if (wrapped)
        return fail(Errc::invalid_argument,
                    fmt::format("{}: its byte size wraps 64 bits", tensor_label(t)));
    return total;
}

const ggml_backend_buffer* tensor_buffer(const ggml_tensor* t) noexcept {
    return t->view_src ? t->view_src->buffer : t->buffer;
}

std::optional<uint64_t> offset_inside(const ggml_tensor* t, uint64_t base, uint64_t size,
                                      uint64_t nbytes) noexcept {
    const auto addr = reinterpret_cast<uintptr_t>(t->data);
    if (addr < base || addr - base > size || nbytes > size - (addr - base)) return std::nullopt;
    return addr - base;
}

Expected<RpcTensor> encode_rpc_tensor(const ggml_tensor* t, const RemoteBuffer& buf) {
    if (t->type < 0 || t->type >= GGML_TYPE_COUNT)
        return fail(Errc::invalid_argument,
                    fmt::format("tensor type {}", static_cast<int>(t->type)));
    for (int i = 0; i < GGML_MAX_DIMS; ++i)
        // The wire holds 32 bits of each; a larger tensor cannot travel faithfully.
        if (t->ne[i] < 0 || t->ne[i] > INT64_C(0xffffffff) || t->nb[i] > 0xffffffffu)
            return fail(Errc::invalid_argument,
                        fmt::format("{}: ne/nb past 32 bits do not fit ggml's rpc tensor",
                                    tensor_label(t)));
    APIR_TRY(check_op(t));
    const void* base = reinterpret_cast<const void*>(static_cast<uintptr_t>(buf.base));
    if (t->data) {
        // ggml's host asserts (and aborts) unless the data lies inside the buffer; its
        // size is the checked one (ggml_nbytes can wrap to a small number).
        auto nb = tensor_nbytes(t);
        if (!nb) return Unexpected{std::move(nb).error()};
        if (!offset_inside(t, buf.base, buf.buffer.size, *nb))
            return fail(Errc::invalid_argument,
                        fmt::format("{}: {} bytes at {:#x} are outside its buffer [{:#x}, +{})",
                                    tensor_label(t), *nb, reinterpret_cast<uintptr_t>(t->data),
                                    buf.base, buf.buffer.size));
    }
    return ggml::to_rpc_tensor(t, buf.buffer.handle, base);
}

bool GraphEncoding::same_nodes(const ggml_cgraph* graph) const {
    auto* g = const_cast<ggml_cgraph*>(graph); // ggml's accessors take it mutable
    const int n = ggml_graph_n_nodes(g);
    if (!complete_ || n < 0 || static_cast<size_t>(n) != nodes_.size()) return false;
    for (int i = 0; i < n; ++i)
        if (id_of(ggml_graph_node(g, i)) != nodes_[static_cast<size_t>(i)]) return false;
    return true;
}

bool GraphEncoding::same_as_last(ggml_cgraph* graph, const BufferResolver& resolve) const {
    if (!same_nodes(graph)) return false;
    // Users before their sources (tensors_ lists sources first): a tensor is read only
    // once the tensor that reached it (or the graph, for a node) is found unchanged, so
    // no pointer of the last graph that this one no longer reaches is followed.
    for (size_t i = tensors_.size(); i-- > 0;)
        if (std::memcmp(tensor_of(tensors_[i].id), &snapshot_[i], sizeof(ggml_tensor)) != 0)
            return false;
    for (const auto& [b, was] : buffers_) {
        const RemoteBuffer* now = resolve(b);
        if (!now || now->buffer.handle != was.buffer.handle || now->base != was.base ||
            now->buffer.size != was.buffer.size)
            return false;
    }
    return true;
}

Expected<void> GraphEncoding::build(ggml_cgraph* graph, const BufferResolver& resolve) {
    reused_ = same_as_last(graph, resolve);
    if (reused_) return {};
    complete_ = false;
    nodes_.clear();
    tensors_.clear();
    inputs_.clear();
    snapshot_.clear();
    buffers_.clear();
    const int n = ggml_graph_n_nodes(graph);
    if (n < 0) return fail(Errc::invalid_argument, "graph with a negative node count");
    nodes_.reserve(static_cast<size_t>(n));
    std::unordered_set<const ggml_tensor*> is_node;
    is_node.reserve(static_cast<size_t>(n));
    for (int i = 0; i < n; ++i)
        is_node.insert(ggml_graph_node(graph, i));

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
                if (next && seen.insert(next).second) {
                    stack.emplace_back(next, 0);
                    if (stack.size() > ggml::max_graph_depth)
                        return fail(Errc::invalid_argument,
                                    fmt::format("{} ends a chain of sources deeper than {} "
                                                "tensors, which ggml's host would recurse "
                                                "through",
                                                tensor_label(next), ggml::max_graph_depth));
                }
                continue;
            }
            const ggml_tensor* done = t;
            stack.pop_back();
            if (!done->data)
                return fail(Errc::invalid_argument,
                            fmt::format("{} has no data (not allocated)", tensor_label(done)));
            const ggml_backend_buffer* buffer = tensor_buffer(done);
            const RemoteBuffer* rb = resolve(buffer);
            if (!rb)
                return fail(Errc::invalid_argument,
                            fmt::format("{} lives in a buffer that is not this device's ({})",
                                        tensor_label(done),
                                        buffer ? "another device" : "no buffer"));
            auto rt = encode_rpc_tensor(done, *rb);
            if (!rt) return Unexpected{std::move(rt).error()};
            tensors_.push_back(*rt);
            snapshot_.push_back(*done);
            if (std::none_of(buffers_.begin(), buffers_.end(),
                             [&](const auto& u) { return u.first == buffer; }))
                buffers_.emplace_back(buffer, *rb);
            if (!is_node.contains(done)) inputs_.push_back(done);
        }
        return {};
    };
    for (int i = 0; i < n; ++i) {
        const ggml_tensor* node = ggml_graph_node(graph, i);
        if (!node) return fail(Errc::invalid_argument, fmt::format("graph node {} is null", i));
        nodes_.push_back(id_of(node));
        if (auto r = add(node); !r) return r;
    }
    complete_ = true;
    return {};
}

Expected<size_t> GraphEncoding::write(std::span<std::byte> out) const {
    return ggml::write_graph(nodes_, tensors_, out);
}

} // namespace apir::ggml_remote
