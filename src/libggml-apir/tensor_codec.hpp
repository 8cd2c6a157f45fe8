// ggml's in-memory tensors and graphs made ready for ggml's host backend: each tensor
// is checked with ggml's own knowledge (every type, ggml_nbytes) before it becomes an
// rpc tensor (apir::ggml::to_rpc_tensor), because ggml's host aborts on a tensor outside
// its buffer and the wire truncates ne and nb to 32 bits.
#pragma once

#include "remote.hpp"

#include "ggml.h"

#include <functional>
#include <optional>
#include <span>
#include <vector>

namespace apir::ggml_remote {

/// The remote buffer behind a ggml buffer, or null when the buffer is not one of
/// this device's (a CPU buffer, another device's).
using BufferResolver = std::function<const RemoteBuffer*(const ggml_backend_buffer*)>;

/// The buffer that holds a tensor's data: its view source's for a view.
[[nodiscard]] const ggml_backend_buffer* tensor_buffer(const ggml_tensor* t) noexcept;

/// Bytes t spans from its data (what ggml_nbytes computes), or INVALID_ARGUMENT when the
/// sum wraps 64 bits or a dimension is negative: ggml_nbytes wraps silently, and a tensor
/// whose ne/nb fit the wire can still have a byte size past 2^64.
[[nodiscard]] Expected<uint64_t> tensor_nbytes(const ggml_tensor* t);

/// The offset of t's data from `base` when its `nbytes` bytes (tensor_nbytes) lie inside
/// [base, base + size); nullopt otherwise.
[[nodiscard]] std::optional<uint64_t> offset_inside(const ggml_tensor* t, uint64_t base,
                                                    uint64_t size, uint64_t nbytes) noexcept;

/// The rpc tensor of t, whose data lies in buf (data travels as an offset from the
/// buffer's base). INVALID_ARGUMENT when a field does not fit the wire (ne or nb past
/// 32 bits, an unknown type or op, a byte size that wraps) or the data is not inside buf
/// (its overflow-checked size, tensor_nbytes).
[[nodiscard]] Expected<RpcTensor> encode_rpc_tensor(const ggml_tensor* t, const RemoteBuffer& buf);

/// A graph made ready to send: its nodes and every tensor they reach, checked.
///
/// A program that computes the same graph again (a token of a language model after the
/// last one) hands over the same tensors, unchanged but for their data. build() first
/// compares the graph with the last one it built: the same nodes, every tensor reached
/// byte for byte the same ggml_tensor, every buffer the same remote buffer. Then the
/// encoding is the last one (reused() is true) and nothing is walked, checked or
/// encoded again.
class GraphEncoding {
public:
    /// Walks the graph's nodes through src and view_src as ggml's host does. Fails
    /// (naming the tensor) when a tensor has no data, lives in a buffer that is not this
    /// device's, does not fit, has an op ggml's host cannot run, or when a chain of
    /// sources is deeper than ggml::max_graph_depth. Resolves every buffer it uses.
    [[nodiscard]] Expected<void> build(ggml_cgraph* graph, const BufferResolver& resolve);
    /// Whether graph has the nodes of the last graph built (the first test of build()'s
    /// reuse; a cheap way to pick among several encodings).
    [[nodiscard]] bool same_nodes(const ggml_cgraph* graph) const;
    /// Whether the last build() found the graph it built before (and encoded nothing).
    [[nodiscard]] bool reused() const noexcept { return reused_; }
    [[nodiscard]] size_t node_count() const noexcept { return nodes_.size(); }
    /// The tensors the graph reads without computing them (reached, not nodes): the
    /// data the host must already hold.
    [[nodiscard]] const std::vector<const ggml_tensor*>& inputs() const noexcept { return inputs_; }
    [[nodiscard]] size_t size() const noexcept {
        return ggml::graph_encoded_size(nodes_.size(), tensors_.size());
    }
    /// Writes the packed layout (apir::ggml::encode_graph's, without checking again what
    /// build() checked) into out; ENCODE_OVERFLOW when it does not fit.
    [[nodiscard]] Expected<size_t> write(std::span<std::byte> out) const;

private:
    [[nodiscard]] bool same_as_last(ggml_cgraph* graph, const BufferResolver& resolve) const;

    std::vector<uint64_t> nodes_;    ///< ids: the nodes' addresses
    std::vector<RpcTensor> tensors_; ///< ids: the reached tensors' addresses
    std::vector<const ggml_tensor*> inputs_;
    // What else the last build saw, for same_as_last(): a copy of the bytes of every
    // tensor reached (in tensors_' order), and each buffer once.
    std::vector<ggml_tensor> snapshot_;
    std::vector<std::pair<const ggml_backend_buffer*, RemoteBuffer>> buffers_;
    bool complete_ = false; ///< the last build succeeded: the fields above describe it
    bool reused_ = false;
};

} // namespace apir::ggml_remote
