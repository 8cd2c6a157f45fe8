// The checks the host backend puts between a guest's bytes and ggml (docs/GGML-HOST.md):
// a tensor's layout (type, ne/nb, extent), and per op the shape rules ggml's kernels
// assume. Every function here is pure: it reads the tensors it is given and nothing else.
#pragma once

#include <apir/ggml/tensor.hpp>

#include <ggml.h>

#include <cstdint>
#include <string_view>

namespace apir::ggml_host {

/// The function results the backend answers (the guest sees FORWARD 4 + code). 6 is the
/// ABI's invalid-index code and is not used for anything else.
enum class Code : uint32_t {
    ok = 0,
    bad_request = 1,     ///< the request did not decode (ggml's own "refused" code)
    unknown_handle = 2,  ///< a buffer or buffer-type handle this context did not give out
    bad_tensor = 3,      ///< a tensor's type, shape, strides or extent
    bad_range = 4,       ///< a transfer's offset/size, or a blob range
    bad_graph = 5,       ///< a graph's counts, ids or references
    not_initialized = 7, ///< the context is not open (a failed LOADLIBRARY)
    reply_overflow = 8,  ///< the reply did not fit its region
    unsupported_op = 9,  ///< an op outside the checked table, or the device refuses it
    no_memory = 10,      ///< the host could not allocate what the request needs
    bad_index = 12,      ///< GET_ROWS / SET_ROWS: a row index outside its tensor
};
[[nodiscard]] std::string_view code_name(Code c) noexcept;
[[nodiscard]] constexpr uint32_t raw(Code c) noexcept {
    return static_cast<uint32_t>(c);
}

/// A tensor's layout, checked: type known, ne/nb consistent. nbytes is the extent from
/// the data offset, as ggml_nbytes computes it (0 when an ne is 0), without overflow.
struct Layout {
    uint64_t nbytes = 0;
};
/// Code::ok and the layout, or Code::bad_tensor.
[[nodiscard]] Code check_layout(uint32_t type, const uint32_t (&ne)[4], const uint32_t (&nb)[4],
                                Layout& out) noexcept;
[[nodiscard]] Code check_layout(const ggml::RpcTensor& t, Layout& out) noexcept;
/// The same for a ggml tensor (ne/nb read as sent, not trusted to fit 32 bits).
[[nodiscard]] Code check_layout(const ggml_tensor& t, Layout& out) noexcept;

/// [offset, offset + size) inside [0, limit), overflow-checked.
[[nodiscard]] constexpr bool range_inside(uint64_t offset, uint64_t size, uint64_t limit) noexcept {
    return offset <= limit && size <= limit - offset;
}

/// The op checks: for a node whose sources are set (and checked by check_layout), whether
/// the shapes, types and strides are those ggml's CPU kernels assume for its op.
/// Code::unsupported_op for an op the table does not cover, Code::bad_tensor for a
/// violation. Ops whose kernels index by tensor data (GET_ROWS, SET_ROWS) are checked
/// again before they run (index_source()).
[[nodiscard]] Code check_op(const ggml_tensor& node) noexcept;

/// For an op that indexes rows by the values of one of its sources: that source (I32 or
/// I64 indices) and the row count the values must stay under; null otherwise.
struct IndexRule {
    const ggml_tensor* indices = nullptr;
    int64_t rows = 0;
};
[[nodiscard]] IndexRule index_rule(const ggml_tensor& node) noexcept;
/// Whether every value of rule.indices (in host memory, already computed) is in
/// [0, rule.rows).
[[nodiscard]] bool indices_in_range(const IndexRule& rule) noexcept;

/// Whether ggml's CPU device computes a node of this op (not a view, reshape, permute or
/// transpose, nor a leaf), so that its threads meet after it.
[[nodiscard]] bool op_computes(ggml_op op) noexcept;

/// The work of a node that computes, for choosing a thread count: its multiply-adds for a
/// matrix product (MUL_MAT, MUL_MAT_ID: each output element a dot product of src[0]'s
/// rows), twice its output's elements per key for FLASH_ATTN_EXT, else its output's
/// elements.
[[nodiscard]] uint64_t node_work(const ggml_tensor& node) noexcept;

/// The minimum work per computing node and thread for a thread to pay: ggml's CPU device
/// makes every thread wait for every other one after each node, and on a busy machine
/// (a guest's vCPUs beside the host's threads) that wait lasts until the scheduler runs
/// a thread that was taken off its CPU, so a thread that shares too little of a node
/// costs more than it saves.
inline constexpr uint64_t work_per_thread_step = uint64_t{1} << 19;

/// The threads for a graph of `steps` computing nodes doing `work` in all (node_work):
/// one per work_per_thread_step of work per node, at least 1, at most max_threads.
[[nodiscard]] int threads_for_work(uint64_t work, uint64_t steps, int max_threads) noexcept;

} // namespace apir::ggml_host
