// ggml's packed graph layout (the blob named by backend_graph_compute):
//   uint32 n_nodes, uint64 node ids[n_nodes], uint32 n_tensors, rpc tensor[n_tensors]
// with no alignment padding. Every tensor the nodes reach through src and view_src
// appears once; ids are non-zero and unique.
//
//     apir::ggml::Graph g;
//     uint64_t a = g.add(make_tensor(Type::f32, {4}).place(buf, 0));
//     uint64_t b = g.add(make_tensor(Type::f32, {4}).place(buf, 16));
//     g.add_node(make_tensor(Type::f32, {4}).place(buf, 32), Op::add, {a, b});
//     device.graph_compute(g);
#pragma once

#include "apir/ggml/tensor.hpp"

#include <cstdint>
#include <initializer_list>
#include <span>
#include <vector>

#include "apir/export.hpp"

APIR_EXPORT_BEGIN

namespace apir::ggml {

/// Bytes of a packed graph of n_nodes nodes and n_tensors tensors.
[[nodiscard]] constexpr uint64_t graph_encoded_size(uint64_t n_nodes, uint64_t n_tensors) noexcept {
    return 4 + 8 * n_nodes + 4 + sizeof(RpcTensor) * n_tensors;
}

/// Deepest chain of tensors that ggml's host follows through src and view_src before
/// reaching one it already made. ggml's host builds the graph recursively, one stack
/// frame per tensor of the chain, from each node in order; a chain past this bound
/// (reachable only when the node list omits the tensors of the chain) could overflow
/// a host thread's stack, so such a graph is refused.
inline constexpr size_t max_graph_depth = 16384;

/// Checks a graph the way a careful host reads it: at least one node, counts that fit
/// ggml's int, non-zero unique ids, every node and every src/view_src id among the
/// tensors, every op runnable (op_runnable: one of ggml's, no custom op), and no chain
/// of sources deeper than max_graph_depth as ggml's host walks it. INVALID_ARGUMENT
/// names the first violation.
[[nodiscard]] Expected<void> validate_graph(std::span<const uint64_t> nodes,
                                            std::span<const RpcTensor> tensors);

/// Validates, then writes the packed layout into out; returns the bytes written.
[[nodiscard]] Expected<size_t> encode_graph(std::span<const uint64_t> nodes,
                                            std::span<const RpcTensor> tensors,
                                            std::span<std::byte> out);
/// Writes the packed layout without validating it: for an encoder whose graph was
/// checked as it was made (validate_graph's rules). ENCODE_OVERFLOW when out is short.
[[nodiscard]] Expected<size_t> write_graph(std::span<const uint64_t> nodes,
                                           std::span<const RpcTensor> tensors,
                                           std::span<std::byte> out);

/// A decoded graph (what a host reads); the tensors are copies.
struct DecodedGraph {
    std::vector<uint64_t> nodes;
    std::vector<RpcTensor> tensors;
};
/// Reads the packed layout: counts checked against the bytes present and max_tensors,
/// then validate_graph(). For hosts and tests.
[[nodiscard]] Expected<DecodedGraph> decode_graph(std::span<const std::byte> in,
                                                  uint64_t max_tensors = uint64_t{1} << 20);

/// Builds a graph from tensor descriptions; ids are given in order from 1 unless a
/// tensor brings its own.
class Graph {
public:
    /// Adds a tensor the nodes reach (a leaf, or an intermediate not computed here).
    /// Returns its id.
    uint64_t add(RpcTensor t);
    /// Adds a node computed in the order added: t with op, sources (ids returned by
    /// add/add_node) and the COMPUTE flag. Returns its id.
    uint64_t add_node(RpcTensor t, Op op, std::initializer_list<uint64_t> src);
    /// Adds an already described tensor as a node (flags set by the caller).
    uint64_t add_node(RpcTensor t);

    [[nodiscard]] std::span<const uint64_t> nodes() const noexcept { return nodes_; }
    [[nodiscard]] std::span<const RpcTensor> tensors() const noexcept { return tensors_; }
    [[nodiscard]] uint64_t encoded_size() const noexcept {
        return graph_encoded_size(nodes_.size(), tensors_.size());
    }
    [[nodiscard]] Expected<size_t> encode(std::span<std::byte> out) const {
        return encode_graph(nodes_, tensors_, out);
    }

private:
    std::vector<uint64_t> nodes_;
    std::vector<RpcTensor> tensors_;
    uint64_t next_id_ = 1;
};

} // namespace apir::ggml

APIR_EXPORT_END
