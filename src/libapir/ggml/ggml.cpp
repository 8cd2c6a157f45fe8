// Compiled parts of apir/ggml: type sizes, nbytes, statuses, graph encoding.
#include "apir/ggml/client.hpp"
#include "apir/ggml/graph.hpp"
#include "apir/ggml/tensor.hpp"

#include <fmt/format.h>

#include <chrono>
#include <limits>
#include <unordered_map>
#include <vector>

namespace apir::ggml {

// Block sizes and bytes per block, as ggml d99724f2's type traits give them (checked
// against ggml_blck_size / ggml_type_size by tests/libggml-apir when ggml is found).
std::optional<TypeTraits> type_traits(Type t) noexcept {
    switch (t) {
    case Type::f32:
        return TypeTraits{"f32", 1, 4};
    case Type::f16:
        return TypeTraits{"f16", 1, 2};
    case Type::q4_0:
        return TypeTraits{"q4_0", 32, 18};
    case Type::q4_1:
        return TypeTraits{"q4_1", 32, 20};
    case Type::q5_0:
        return TypeTraits{"q5_0", 32, 22};
    case Type::q5_1:
        return TypeTraits{"q5_1", 32, 24};
    case Type::q8_0:
        return TypeTraits{"q8_0", 32, 34};
    case Type::q8_1:
        return TypeTraits{"q8_1", 32, 36};
    case Type::q2_k:
        return TypeTraits{"q2_K", 256, 84};
    case Type::q3_k:
        return TypeTraits{"q3_K", 256, 110};
    case Type::q4_k:
        return TypeTraits{"q4_K", 256, 144};
    case Type::q5_k:
        return TypeTraits{"q5_K", 256, 176};
    case Type::q6_k:
        return TypeTraits{"q6_K", 256, 210};
    case Type::q8_k:
        return TypeTraits{"q8_K", 256, 292};
    case Type::iq2_xxs:
        return TypeTraits{"iq2_xxs", 256, 66};
    case Type::iq2_xs:
        return TypeTraits{"iq2_xs", 256, 74};
    case Type::iq3_xxs:
        return TypeTraits{"iq3_xxs", 256, 98};
    case Type::iq1_s:
        return TypeTraits{"iq1_s", 256, 50};
    case Type::iq4_nl:
        return TypeTraits{"iq4_nl", 32, 18};
    case Type::iq3_s:
        return TypeTraits{"iq3_s", 256, 110};
    case Type::iq2_s:
        return TypeTraits{"iq2_s", 256, 82};
    case Type::iq4_xs:
        return TypeTraits{"iq4_xs", 256, 136};
    case Type::i8:
        return TypeTraits{"i8", 1, 1};
    case Type::i16:
        return TypeTraits{"i16", 1, 2};
    case Type::i32:
        return TypeTraits{"i32", 1, 4};
    case Type::i64:
        return TypeTraits{"i64", 1, 8};
    case Type::f64:
        return TypeTraits{"f64", 1, 8};
    case Type::iq1_m:
        return TypeTraits{"iq1_m", 256, 56};
    case Type::bf16:
        return TypeTraits{"bf16", 1, 2};
    case Type::tq1_0:
        return TypeTraits{"tq1_0", 256, 54};
    case Type::tq2_0:
        return TypeTraits{"tq2_0", 256, 66};
    case Type::mxfp4:
        return TypeTraits{"mxfp4", 32, 17};
    case Type::nvfp4:
        return TypeTraits{"nvfp4", 64, 36};
    case Type::q1_0:
        return TypeTraits{"q1_0", 128, 18};
    case Type::q2_0:
        return TypeTraits{"q2_0", 64, 18};
    }
    return std::nullopt;
}

RpcTensor make_tensor(Type t, std::initializer_list<uint32_t> ne) noexcept {
    RpcTensor r;
    r.type = static_cast<uint32_t>(t);
    r.ne = {1, 1, 1, 1};
    size_t i = 0;
    for (uint32_t n : ne) {
        if (i == max_dims) break;
        r.ne[i++] = n;
    }
    auto tt = type_traits(t);
    if (!tt) return r;
    // ggml: nb[0] = type size, nb[1] = nb[0] * ne[0] / block, nb[i] = nb[i-1] * ne[i-1];
    // sizes past 32 bits do not travel (the wire truncates), so they stay 0 here.
    uint64_t nb = tt->type_size;
    r.nb[0] = static_cast<uint32_t>(nb);
    nb = nb * (r.ne[0] / tt->block_size);
    for (size_t d = 1; d < max_dims; ++d) {
        if (nb > std::numeric_limits<uint32_t>::max()) return r;
        r.nb[d] = static_cast<uint32_t>(nb);
        nb *= r.ne[d];
    }
    return r;
}

Expected<uint64_t> nbytes(const RpcTensor& t) {
    auto tt = type_traits(static_cast<Type>(t.type));
    if (!tt)
        return fail(Errc::invalid_argument,
                    fmt::format("tensor type {} has no known size", t.type));
    for (uint32_t n : t.ne)
        if (n == 0) return uint64_t{0};
    // Each product of two 32-bit factors fits 64 bits; only the sums can wrap.
    uint64_t total = 0;
    bool wrapped = false;
    auto add = [&](uint64_t v) { wrapped |= __builtin_add_overflow(total, v, &total); };
    if (tt->block_size == 1) {
        add(tt->type_size);
        for (size_t i = 0; i < max_dims; ++i)
            add(uint64_t{t.ne[i] - 1} * t.nb[i]);
    } else {
        add(uint64_t{t.ne[0]} * t.nb[0] / tt->block_size);
        for (size_t i = 1; i < max_dims; ++i)
            add(uint64_t{t.ne[i] - 1} * t.nb[i]);
    }
    if (wrapped) return fail(Errc::invalid_argument, "tensor size overflows 64 bits");
    return total;
}

Expected<Status> to_status(int32_t raw) {
    if (raw < -2 || raw > 1)
        return fail(
            Error(Errc::decode_bad_value, fmt::format("ggml_status {} is not in ggml's enum", raw))
                .with_wire_code(static_cast<uint32_t>(raw)));
    return static_cast<Status>(raw);
}

Expected<void> check_status(Status s) {
    switch (s) {
    case Status::success:
        return {};
    case Status::alloc_failed:
        return fail(Errc::ggml_status_alloc_failed);
    case Status::failed:
        return fail(Errc::ggml_status_failed);
    case Status::aborted:
        return fail(Errc::ggml_status_aborted);
    }
    return fail(Errc::decode_bad_value, "unknown ggml_status");
}

namespace detail {

namespace {
int64_t now_ns() noexcept {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(
               std::chrono::steady_clock::now().time_since_epoch())
        .count();
}
} // namespace

HostWatch::Ticket HostWatch::begin() noexcept {
    const bool queued = in_flight_.fetch_add(1, std::memory_order_acq_rel) > 0;
    return Ticket{now_ns(), queued};
}

void HostWatch::end(const Ticket& t, const Error* err, const Logger& logger) {
    in_flight_.fetch_sub(1, std::memory_order_acq_rel);
    const Category cat = err ? err->category() : Category::backend;
    if (!err || cat == Category::backend || cat == Category::protocol) {
        // The host answered (a refusal or a malformed reply is an answer too).
        int64_t now = now_ns(), seen = last_answer_ns_.load(std::memory_order_relaxed);
        while (seen < now &&
               !last_answer_ns_.compare_exchange_weak(seen, now, std::memory_order_relaxed)) {
        }
        return;
    }
    bool lost = cat == Category::device;
    if (cat == Category::timeout) {
        const bool answered_meanwhile =
            last_answer_ns_.load(std::memory_order_relaxed) > t.start_ns;
        lost = !t.queued && !answered_meanwhile;
        if (!lost)
            logger.warn("{}: the call waited behind another call of this device (the host "
                        "is busy, not lost)",
                        err->message());
    }
    if (lost && !lost_.exchange(true, std::memory_order_acq_rel))
        logger.error("the host is lost ({}); every later call of this device fails at once",
                     err->message());
}

Error HostWatch::lost_error() {
    return Error(Errc::disconnected, "an earlier call found the host gone or timed out; "
                                     "this device fails every call from now on");
}

Error named(Error err, Command c) {
    return err.with_context(command_name(c));
}

Expected<bool> to_bool(uint8_t v, std::string_view what) {
    if (v > 1) return fail(Errc::decode_bad_value, fmt::format("{} holds bool {}", what, v));
    return v == 1;
}

Expected<void> check_range(const RpcTensor& t, uint64_t buffer_size, uint64_t offset,
                           uint64_t size) {
    // [data + offset, data + offset + size) inside [0, buffer_size), without wrapping.
    if (t.data > buffer_size || offset > buffer_size - t.data ||
        size > buffer_size - t.data - offset)
        return fail(Errc::invalid_argument,
                    fmt::format("tensor bytes [{}, +{}) outside its buffer of {} bytes",
                                t.data + offset, size, buffer_size));
    return {};
}

} // namespace detail

// ---------------------------------------------------------------------------
// Graphs

Expected<void> validate_graph(std::span<const uint64_t> nodes, std::span<const RpcTensor> tensors) {
    constexpr uint64_t max_count = std::numeric_limits<int32_t>::max();
    if (nodes.empty()) return fail(Errc::invalid_argument, "a graph needs at least one node");
    if (nodes.size() > max_count || tensors.size() > max_count)
        return fail(Errc::invalid_argument, "too many nodes or tensors for ggml's int counts");
    std::unordered_map<uint64_t, size_t> index; // id -> position in tensors
    index.reserve(tensors.size());
    for (size_t i = 0; i < tensors.size(); ++i) {
        const RpcTensor& t = tensors[i];
        if (t.id == 0) return fail(Errc::invalid_argument, "a tensor has id 0");
        if (!index.emplace(t.id, i).second)
            return fail(Errc::invalid_argument, fmt::format("tensor id {} appears twice", t.id));
        if (!op_runnable(t.op))
            return fail(Errc::invalid_argument,
                        fmt::format("tensor {} has op {}, which ggml's host cannot run "
                                    "(not below GGML_OP_COUNT {}, or a custom op)",
                                    t.id, t.op, op_count));
    }
    for (const RpcTensor& t : tensors) {
        for (uint64_t s : t.src)
            if (s != 0 && !index.contains(s))
                return fail(
                    Errc::invalid_argument,
                    fmt::format("tensor {} names source {}, which is not in the graph", t.id, s));
        if (t.view_src != 0 && !index.contains(t.view_src))
            return fail(Errc::invalid_argument,
                        fmt::format("tensor {} is a view of {}, which is not in the graph", t.id,
                                    t.view_src));
    }
    for (uint64_t n : nodes)
        if (!index.contains(n))
            return fail(Errc::invalid_argument,
                        fmt::format("node {} is not among the graph's tensors", n));
    // The host's walk: from each node in order, depth first through src[0..] then
    // view_src, each tensor made once (when first reached). Iterative here.
    std::vector<uint8_t> made(tensors.size(), 0);
    std::vector<std::pair<size_t, size_t>> stack; // tensor, next edge
    for (uint64_t n : nodes) {
        const size_t root = index.at(n);
        if (made[root]) continue;
        made[root] = 1;
        stack.emplace_back(root, 0);
        while (!stack.empty()) {
            auto& [i, edge] = stack.back();
            if (edge > max_src) {
                stack.pop_back();
                continue;
            }
            const uint64_t next = edge < max_src ? tensors[i].src[edge] : tensors[i].view_src;
            ++edge;
            if (next == 0) continue;
            const size_t j = index.at(next);
            if (made[j]) continue;
            made[j] = 1;
            stack.emplace_back(j, 0);
            if (stack.size() > max_graph_depth)
                return fail(Errc::invalid_argument,
                            fmt::format("a chain of sources from node {} is deeper than {} "
                                        "tensors (ggml's host would recurse through it)",
                                        n, max_graph_depth));
        }
    }
    return {};
}

Expected<size_t> write_graph(std::span<const uint64_t> nodes, std::span<const RpcTensor> tensors,
                             std::span<std::byte> out) {
    const uint64_t size = graph_encoded_size(nodes.size(), tensors.size());
    if (size > out.size())
        return fail(Errc::encode_overflow,
                    fmt::format("graph of {} bytes, buffer of {}", size, out.size()));
    // Packed, no padding: the codec's rules (4-byte multiples) hold for every field here.
    Encoder e(out);
    e.write_u32(static_cast<uint32_t>(nodes.size()));
    for (uint64_t n : nodes)
        e.write_u64(n);
    e.write_u32(static_cast<uint32_t>(tensors.size()));
    for (const RpcTensor& t : tensors)
        e.put(t);
    APIR_TRY(e.status());
    return e.size();
}

Expected<size_t> encode_graph(std::span<const uint64_t> nodes, std::span<const RpcTensor> tensors,
                              std::span<std::byte> out) {
    APIR_TRY(validate_graph(nodes, tensors));
    return write_graph(nodes, tensors, out);
}

Expected<DecodedGraph> decode_graph(std::span<const std::byte> in, uint64_t max_tensors) {
    Decoder d(in);
    DecodedGraph g;
    const uint32_t n_nodes = d.read_u32();
    if (d.ok() && n_nodes > d.remaining() / 8)
        return fail(Errc::decode_size_too_large, "node count");
    g.nodes.resize(n_nodes);
    for (uint64_t& n : g.nodes)
        n = d.read_u64();
    const uint32_t n_tensors = d.read_u32();
    if (d.ok() && (n_tensors > max_tensors || n_tensors > d.remaining() / sizeof(RpcTensor)))
        return fail(Errc::decode_size_too_large, "tensor count");
    g.tensors.resize(n_tensors);
    for (RpcTensor& t : g.tensors)
        d.get_into(t);
    APIR_TRY(d.status());
    APIR_TRY(validate_graph(g.nodes, g.tensors));
    return g;
}

uint64_t Graph::add(RpcTensor t) {
    if (t.id == 0) t.id = next_id_;
    next_id_ = std::max(next_id_, t.id + 1);
    tensors_.push_back(t);
    return t.id;
}

uint64_t Graph::add_node(RpcTensor t, Op op, std::initializer_list<uint64_t> src) {
    t.op = static_cast<uint32_t>(op);
    t.src = {};
    size_t i = 0;
    for (uint64_t s : src) {
        if (i == max_src) break;
        t.src[i++] = s;
    }
    t.flags |= flag_compute;
    return add_node(t);
}

uint64_t Graph::add_node(RpcTensor t) {
    uint64_t id = add(t);
    nodes_.push_back(id);
    return id;
}

} // namespace apir::ggml
