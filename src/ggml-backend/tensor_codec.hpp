// ggml's in-memory tensors and graphs turned into what ggml's host backend reads
// (PROTOCOL.md §7): the 304-byte rpc tensor, the packed graph, and the inline tensor
// of supports_op / get_alloc_size. Every tensor is checked first, because ggml's host
// aborts on a tensor outside its buffer and dereferences whatever buffer it is given.
#pragma once

#include "remote.hpp"

#include "ggml.h"

#include <functional>
#include <span>
#include <vector>

namespace apir::ggml_remote {

/// Where a ggml buffer of this device lives on the host.
struct RemoteBuffer {
    uint64_t handle = 0;
    uint64_t base = 0; ///< host address of the buffer's first byte
    uint64_t size = 0;
};

/// The remote buffer behind a ggml buffer, or null when the buffer is not one of
/// this device's (a CPU buffer, another device's).
using BufferResolver = std::function<const RemoteBuffer*(const ggml_backend_buffer*)>;

/// The buffer that holds a tensor's data: its view source's for a view.
[[nodiscard]] const ggml_backend_buffer* tensor_buffer(const ggml_tensor* t) noexcept;

/// The rpc tensor of t, whose data lies in buf (data travels as an offset from the
/// buffer's base). INVALID_ARGUMENT when a field does not fit the wire (ne or nb past
/// 32 bits, an unknown type) or the data is not inside buf.
[[nodiscard]] Expected<RpcTensor> encode_rpc_tensor(const ggml_tensor* t, const RemoteBuffer& buf);

/// Bytes of the packed graph for n_nodes nodes reaching n_tensors tensors.
[[nodiscard]] constexpr size_t graph_wire_size(size_t n_nodes, size_t n_tensors) noexcept {
    return 4 + 8 * n_nodes + 4 + rpc_tensor_size * n_tensors;
}

/// A graph made ready to send: its nodes and every tensor they reach, checked.
class GraphEncoding {
public:
    /// Walks the graph's nodes through src and view_src. Fails (naming the tensor) when a
    /// tensor has no data, lives in a buffer that is not this device's, or does not fit.
    [[nodiscard]] Expected<void> build(ggml_cgraph* graph, const BufferResolver& resolve);
    [[nodiscard]] size_t size() const noexcept {
        return graph_wire_size(nodes_.size(), tensors_.size());
    }
    /// Writes the packed layout into out (at least size() bytes).
    void write(std::span<std::byte> out) const noexcept;

private:
    std::vector<uint64_t> nodes_;
    std::vector<RpcTensor> tensors_;
};

/// The inline tensor of supports_op / get_alloc_size: op's raw bytes, its buffer handle
/// when op is in one of this device's buffers, its view source, then its sources up to
/// the first absent one. The copies carry no guest pointer the host could follow
/// (sources' buffers, sources' sources, extra), since the host maps only op's own.
[[nodiscard]] std::vector<std::byte> encode_inline_tensor(const ggml_tensor* op,
                                                          const BufferResolver& resolve);

} // namespace apir::ggml_remote
