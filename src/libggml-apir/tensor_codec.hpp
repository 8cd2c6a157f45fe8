// ggml's in-memory tensors and graphs made ready for ggml's host backend: each tensor
// is checked with ggml's own knowledge (every type, ggml_nbytes) before it becomes an
// rpc tensor (apir::ggml::to_rpc_tensor), because ggml's host aborts on a tensor outside
// its buffer and the wire truncates ne and nb to 32 bits.
#pragma once

#include "remote.hpp"

#include "ggml.h"

#include <functional>
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

/// The rpc tensor of t, whose data lies in buf (data travels as an offset from the
/// buffer's base). INVALID_ARGUMENT when a field does not fit the wire (ne or nb past
/// 32 bits, an unknown type or op, a byte size that wraps) or the data is not inside buf
/// (its overflow-checked size, tensor_nbytes).
[[nodiscard]] Expected<RpcTensor> encode_rpc_tensor(const ggml_tensor* t, const RemoteBuffer& buf);

/// A graph made ready to send: its nodes and every tensor they reach, checked.
class GraphEncoding {
public:
    /// Walks the graph's nodes through src and view_src as ggml's host does. Fails
    /// (naming the tensor) when a tensor has no data, lives in a buffer that is not this
    /// device's, does not fit, has an op ggml's host cannot run, or when a chain of
    /// sources is deeper than ggml::max_graph_depth.
    [[nodiscard]] Expected<void> build(ggml_cgraph* graph, const BufferResolver& resolve);
    [[nodiscard]] size_t node_count() const noexcept { return nodes_.size(); }
    /// The tensors the graph reads without computing them (reached, not nodes), each
    /// with its buffer: the data the host must already hold.
    [[nodiscard]] const std::vector<std::pair<const ggml_tensor*, const RemoteBuffer*>>&
    inputs() const noexcept {
        return inputs_;
    }
    [[nodiscard]] size_t size() const noexcept {
        return ggml::graph_encoded_size(nodes_.size(), tensors_.size());
    }
    /// Writes the packed layout into out (apir::ggml::encode_graph).
    [[nodiscard]] Expected<size_t> write(std::span<std::byte> out) const {
        return ggml::encode_graph(nodes_, tensors_, out);
    }

private:
    std::vector<uint64_t> nodes_;
    std::vector<RpcTensor> tensors_;
    std::vector<std::pair<const ggml_tensor*, const RemoteBuffer*>> inputs_;
};

} // namespace apir::ggml_remote
