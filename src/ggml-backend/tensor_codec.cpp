#include "tensor_codec.hpp"

#include <unordered_set>

#include <fmt/format.h>

namespace apir::ggml_remote {

namespace {

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
    if (t->type < 0 || t->type >= GGML_TYPE_COUNT)
        return fail(Errc::invalid_argument,
                    fmt::format("tensor type {}", static_cast<int>(t->type)));
    for (int i = 0; i < GGML_MAX_DIMS; ++i)
        // The wire holds 32 bits of each; a larger tensor cannot travel faithfully.
        if (t->ne[i] < 0 || t->ne[i] > INT64_C(0xffffffff) || t->nb[i] > 0xffffffffu)
            return fail(Errc::invalid_argument,
                        fmt::format("{}: ne/nb past 32 bits do not fit ggml's rpc tensor",
                                    tensor_label(t)));
    const void* base = reinterpret_cast<const void*>(static_cast<uintptr_t>(buf.base));
    if (t->data) {
        // ggml's host asserts (and aborts) unless the data lies inside the buffer.
        const auto addr = reinterpret_cast<uintptr_t>(t->data);
        const uint64_t n = ggml_nbytes(t);
        const uint64_t size = buf.buffer.size;
        if (addr < buf.base || addr - buf.base > size || n > size - (addr - buf.base))
            return fail(Errc::invalid_argument,
                        fmt::format("{}: {} bytes at {:#x} are outside its buffer [{:#x}, +{})",
                                    tensor_label(t), n, addr, buf.base, size));
    }
    return ggml::to_rpc_tensor(t, buf.buffer.handle, base);
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
    return {};
}

} // namespace apir::ggml_remote
