// Tensor layout and per-op checks (checks.hpp). The op rules restate, in our own terms, what
// ggml's op constructors assert (ggml.c) and what its CPU kernels assume (ggml-cpu): a node
// that breaks one would abort the host inside ggml, or read and write outside its tensors.
#include "checks.hpp"

#include <ggml-backend.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cstring>

namespace apir::ggml_host {

std::string_view code_name(Code c) noexcept {
    switch (c) {
    case Code::ok:
        return "OK";
    case Code::bad_request:
        return "BAD_REQUEST";
    case Code::unknown_handle:
        return "UNKNOWN_HANDLE";
    case Code::bad_tensor:
        return "BAD_TENSOR";
    case Code::bad_range:
        return "BAD_RANGE";
    case Code::bad_graph:
        return "BAD_GRAPH";
    case Code::not_initialized:
        return "NOT_INITIALIZED";
    case Code::reply_overflow:
        return "REPLY_OVERFLOW";
    case Code::unsupported_op:
        return "UNSUPPORTED_OP";
    case Code::no_memory:
        return "NO_MEMORY";
    case Code::bad_index:
        return "BAD_INDEX";
    }
    return "UNKNOWN";
}

namespace {

// Elements a tensor may hold: ggml counts them in int64 (ggml_nelements) and multiplies
// them further in places; 2^48 leaves room.
constexpr uint64_t max_elements = uint64_t{1} << 48;

Code layout_of(uint64_t type, const uint64_t (&ne)[4], const uint64_t (&nb)[4],
               Layout& out) noexcept {
    if (type >= GGML_TYPE_COUNT) return Code::bad_tensor;
    const auto gt = static_cast<ggml_type>(type);
    const int64_t blck = ggml_blck_size(gt);
    const size_t ts = ggml_type_size(gt);
    if (blck <= 0 || ts == 0) return Code::bad_tensor; // a removed type
    uint64_t elements = 1;
    for (uint64_t n : ne) {
        if (n > max_elements) return Code::bad_tensor;
        if (__builtin_mul_overflow(elements, n == 0 ? 1 : n, &elements) || elements > max_elements)
            return Code::bad_tensor;
    }
    if (blck > 1) {
        // A quantized row is whole blocks, stored one after another.
        if (ne[0] % static_cast<uint64_t>(blck) != 0 || nb[0] != ts) return Code::bad_tensor;
    } else if (nb[0] < ts) {
        // Row kernels read ne0 consecutive elements from a row's start: with nb0 >= the
        // element size that stays inside the extent below.
        return Code::bad_tensor;
    }
    out.nbytes = 0;
    for (uint64_t n : ne)
        if (n == 0) return Code::ok; // ggml_nbytes: an empty tensor spans nothing
    uint64_t bytes = 0;
    if (blck == 1) {
        bytes = ts;
    } else if (__builtin_mul_overflow(ne[0] / static_cast<uint64_t>(blck), nb[0], &bytes)) {
        return Code::bad_tensor;
    }
    for (size_t i = blck == 1 ? 0 : 1; i < 4; ++i) {
        uint64_t span = 0;
        if (__builtin_mul_overflow(ne[i] - 1, nb[i], &span) ||
            __builtin_add_overflow(bytes, span, &bytes))
            return Code::bad_tensor;
    }
    if (bytes > (uint64_t{1} << 62)) return Code::bad_tensor;
    out.nbytes = bytes;
    return Code::ok;
}

} // namespace

Code check_layout(uint32_t type, const uint32_t (&ne)[4], const uint32_t (&nb)[4],
                  Layout& out) noexcept {
    const uint64_t ne64[4] = {ne[0], ne[1], ne[2], ne[3]};
    const uint64_t nb64[4] = {nb[0], nb[1], nb[2], nb[3]};
    return layout_of(type, ne64, nb64, out);
}

Code check_layout(const ggml::RpcTensor& t, Layout& out) noexcept {
    const uint32_t ne[4] = {t.ne[0], t.ne[1], t.ne[2], t.ne[3]};
    const uint32_t nb[4] = {t.nb[0], t.nb[1], t.nb[2], t.nb[3]};
    return check_layout(t.type, ne, nb, out);
}

Code check_layout(const ggml_tensor& t, Layout& out) noexcept {
    uint64_t ne[4];
    uint64_t nb[4];
    for (int i = 0; i < 4; ++i) {
        if (t.ne[i] < 0) return Code::bad_tensor;
        ne[i] = static_cast<uint64_t>(t.ne[i]);
        nb[i] = t.nb[i];
    }
    return layout_of(static_cast<uint64_t>(static_cast<uint32_t>(t.type)), ne, nb, out);
}

namespace {

// Small helpers over tensors already through check_layout.
bool same_shape(const ggml_tensor* a, const ggml_tensor* b) {
    return a->ne[0] == b->ne[0] && a->ne[1] == b->ne[1] && a->ne[2] == b->ne[2] &&
           a->ne[3] == b->ne[3];
}
// b repeats to fill a (ggml_can_repeat(b, a)).
bool repeats_into(const ggml_tensor* b, const ggml_tensor* a) {
    if (ggml_is_empty(b)) return ggml_is_empty(a);
    for (int i = 0; i < 4; ++i)
        if (b->ne[i] == 0 || a->ne[i] % b->ne[i] != 0) return false;
    return true;
}
bool elem_stride(const ggml_tensor* t) {
    return t->nb[0] == ggml_type_size(t->type);
}
// Rows packed one after another in every dimension, a dimension of 1 included (where
// ggml_is_contiguous lets its stride be anything): what a kernel that walks the rows as
// one run, row i at i * nb1, needs.
bool packed(const ggml_tensor* t) {
    return elem_stride(t) && t->nb[1] == ggml_row_size(t->type, t->ne[0]) &&
           t->nb[2] == t->nb[1] * static_cast<size_t>(t->ne[1]) &&
           t->nb[3] == t->nb[2] * static_cast<size_t>(t->ne[2]);
}
// The `bytes` from t's start lie inside t's buffer (a kernel that reads past the tensor).
// A tensor without a buffer is a supports_op question's, which reads nothing (a graph's
// tensors all have one).
bool reads_inside_buffer(const ggml_tensor* t, uint64_t bytes) {
    if (!t->buffer) return true;
    const auto base = reinterpret_cast<uintptr_t>(ggml_backend_buffer_get_base(t->buffer));
    const uint64_t size = ggml_backend_buffer_get_size(t->buffer);
    const auto at = reinterpret_cast<uintptr_t>(t->data);
    if (base == 0 || at < base) return false;
    const uint64_t offset = at - base;
    return offset <= size && bytes <= size - offset;
}
bool is_float(ggml_type t) {
    return t == GGML_TYPE_F32 || t == GGML_TYPE_F16 || t == GGML_TYPE_BF16;
}
// Quantized types ggml-cpu turns into floats (its to_float, and a vec_dot for MUL_MAT):
// all but Q8_1 and Q8_K, which it only writes. Named one by one: a type this list does
// not know is refused.
bool cpu_reads_quantized(ggml_type t) {
    switch (t) {
    case GGML_TYPE_Q4_0:
    case GGML_TYPE_Q4_1:
    case GGML_TYPE_Q5_0:
    case GGML_TYPE_Q5_1:
    case GGML_TYPE_Q8_0:
    case GGML_TYPE_Q2_K:
    case GGML_TYPE_Q3_K:
    case GGML_TYPE_Q4_K:
    case GGML_TYPE_Q5_K:
    case GGML_TYPE_Q6_K:
    case GGML_TYPE_IQ2_XXS:
    case GGML_TYPE_IQ2_XS:
    case GGML_TYPE_IQ3_XXS:
    case GGML_TYPE_IQ1_S:
    case GGML_TYPE_IQ4_NL:
    case GGML_TYPE_IQ3_S:
    case GGML_TYPE_IQ2_S:
    case GGML_TYPE_IQ4_XS:
    case GGML_TYPE_IQ1_M:
    case GGML_TYPE_TQ1_0:
    case GGML_TYPE_TQ2_0:
    case GGML_TYPE_MXFP4:
    case GGML_TYPE_NVFP4:
    case GGML_TYPE_Q1_0:
    case GGML_TYPE_Q2_0:
        return true;
    default:
        return false;
    }
}
// Quantized types ggml-cpu writes from floats (its from_float): the IQ1/IQ2/IQ3 types have
// none and their copies abort.
bool cpu_writes_quantized(ggml_type t) {
    switch (t) {
    case GGML_TYPE_IQ2_XXS:
    case GGML_TYPE_IQ2_XS:
    case GGML_TYPE_IQ3_XXS:
    case GGML_TYPE_IQ1_S:
    case GGML_TYPE_IQ3_S:
    case GGML_TYPE_IQ2_S:
    case GGML_TYPE_IQ1_M:
        return false;
    case GGML_TYPE_Q8_1:
    case GGML_TYPE_Q8_K:
        return true;
    default:
        return cpu_reads_quantized(t);
    }
}
int32_t param(const ggml_tensor* t, int i) {
    return t->op_params[i];
}
float param_f32(const ggml_tensor* t, int i) {
    return std::bit_cast<float>(t->op_params[i]);
}
bool is_vector(const ggml_tensor* t) {
    return t->ne[1] == 1 && t->ne[2] == 1 && t->ne[3] == 1;
}

Code ok_if(bool good) {
    return good ? Code::ok : Code::bad_tensor;
}

// ADD, SUB, MUL, DIV: the CPU's binary kernels (type combinations they implement, element
// strides of dst and src0, src1 repeating into src0).
Code check_binary(const ggml_tensor* d) {
    const ggml_tensor* a = d->src[0];
    const ggml_tensor* b = d->src[1];
    if (!a || !b) return Code::bad_tensor;
    const ggml_type ta = a->type, tb = b->type, td = d->type;
    const bool types = (ta == tb && tb == td && is_float(ta)) ||
                       ((ta == GGML_TYPE_F16 || ta == GGML_TYPE_BF16) && tb == GGML_TYPE_F32 &&
                        (td == ta || td == GGML_TYPE_F32));
    return ok_if(types && repeats_into(b, a) && same_shape(a, d) && elem_stride(a) &&
                 elem_stride(d));
}

Code check_mul_mat(const ggml_tensor* d) {
    const ggml_tensor* a = d->src[0];
    const ggml_tensor* b = d->src[1];
    if (!a || !b) return Code::bad_tensor;
    if (a->ne[2] == 0 || a->ne[3] == 0) return Code::bad_tensor;
    // src0: a type with a CPU vec_dot; src1: F32 (converted to src0's dot type), or the
    // float type of src0 itself.
    if (!is_float(a->type) && !cpu_reads_quantized(a->type)) return Code::bad_tensor;
    if (b->type != GGML_TYPE_F32 && !(b->type == a->type && is_float(a->type)))
        return Code::bad_tensor;
    const bool shapes = a->ne[0] == b->ne[0] && b->ne[2] % a->ne[2] == 0 &&
                        b->ne[3] % a->ne[3] == 0 && d->ne[0] == a->ne[1] && d->ne[1] == b->ne[1] &&
                        d->ne[2] == b->ne[2] && d->ne[3] == b->ne[3];
    const bool strides = elem_stride(a) && elem_stride(b) && !ggml_is_transposed(a) &&
                         d->type == GGML_TYPE_F32 && elem_stride(d) && d->nb[0] <= d->nb[1] &&
                         d->nb[1] <= d->nb[2] && d->nb[2] <= d->nb[3];
    return ok_if(shapes && strides);
}

Code check_soft_max(const ggml_tensor* d) {
    const ggml_tensor* a = d->src[0];
    const ggml_tensor* mask = d->src[1];
    const ggml_tensor* sinks = d->src[2];
    if (!a) return Code::bad_tensor;
    if (a->type != GGML_TYPE_F32 || d->type != GGML_TYPE_F32 || !same_shape(a, d) ||
        !ggml_is_contiguous(a) || !ggml_is_contiguous(d))
        return Code::bad_tensor;
    if (mask) {
        if ((mask->type != GGML_TYPE_F16 && mask->type != GGML_TYPE_F32) ||
            !ggml_is_contiguous(mask) || mask->ne[0] != a->ne[0] || mask->ne[1] < a->ne[1] ||
            mask->ne[2] == 0 || mask->ne[3] == 0 || a->ne[2] % mask->ne[2] != 0 ||
            a->ne[3] % mask->ne[3] != 0)
            return Code::bad_tensor;
    }
    if (sinks && (sinks->type != GGML_TYPE_F32 || sinks->ne[0] != a->ne[2]))
        return Code::bad_tensor;
    return Code::ok;
}

Code check_rope(const ggml_tensor* d) {
    const ggml_tensor* a = d->src[0];
    const ggml_tensor* pos = d->src[1];
    const ggml_tensor* freq = d->src[2];
    if (!a || !pos) return Code::bad_tensor;
    const int32_t n_dims = param(d, 1);
    const int32_t mode = param(d, 2);
    const int32_t n_offs = param(d, 15);
    const bool mrope = (mode & GGML_ROPE_TYPE_MROPE) != 0;
    // The modes ggml-cpu's rotation has a case for; any other value aborts it.
    if (mode != GGML_ROPE_TYPE_NORMAL && mode != GGML_ROPE_TYPE_NEOX &&
        mode != GGML_ROPE_TYPE_MROPE && mode != GGML_ROPE_TYPE_IMROPE &&
        mode != GGML_ROPE_TYPE_VISION)
        return Code::bad_tensor;
    if (a->type != GGML_TYPE_F32 && a->type != GGML_TYPE_F16) return Code::bad_tensor;
    if (d->type != a->type || !same_shape(a, d) || d->nb[0] != a->nb[0] || !elem_stride(d))
        return Code::bad_tensor;
    if (pos->type != GGML_TYPE_I32 || !is_vector(pos) || !elem_stride(pos)) return Code::bad_tensor;
    if (pos->ne[0] != (mrope ? a->ne[2] * 4 : a->ne[2])) return Code::bad_tensor;
    // Rows of an even length: the part past n_dims is copied in pairs.
    if (a->ne[0] % 2 != 0 || n_dims <= 0 || n_dims % 2 != 0 || n_dims > a->ne[0] || n_offs < 0 ||
        n_offs % 2 != 0 || n_offs + int64_t{n_dims} > a->ne[0])
        return Code::bad_tensor;
    if (mrope) {
        // The sections (params 11..14): ggml divides by their sum, asserts it fits, and
        // asserts one of the first three is set.
        int64_t sum = 0;
        for (int i = 11; i <= 14; ++i) {
            if (param(d, i) < 0) return Code::bad_tensor;
            sum += param(d, i);
        }
        if (sum <= 0 || sum > n_dims) return Code::bad_tensor;
        if (param(d, 11) == 0 && param(d, 12) == 0 && param(d, 13) == 0) return Code::bad_tensor;
    }
    if (mode == GGML_ROPE_TYPE_VISION && (n_dims != a->ne[0] / 2 || n_offs != 0))
        return Code::bad_tensor;
    // ggml asserts n_dims / 2 factors, and ggml-cpu's rotation cache reads one per pair of
    // the whole row: past the tensor where n_dims < ne0 (ggml's own tests make them so),
    // so those reads must stay inside the factors' buffer, the guest's own memory.
    if (freq && (freq->type != GGML_TYPE_F32 || freq->ne[0] < n_dims / 2 || !elem_stride(freq) ||
                 !reads_inside_buffer(freq, static_cast<uint64_t>(a->ne[0] / 2) * 4)))
        return Code::bad_tensor;
    return Code::ok;
}

Code check_get_rows(const ggml_tensor* d) {
    const ggml_tensor* a = d->src[0];
    const ggml_tensor* b = d->src[1];
    if (!a || !b) return Code::bad_tensor;
    const bool shapes = a->ne[2] == b->ne[1] && a->ne[3] == b->ne[2] && b->ne[3] == 1 &&
                        d->ne[0] == a->ne[0] && d->ne[1] == b->ne[0] && d->ne[2] == b->ne[1] &&
                        d->ne[3] == b->ne[2];
    // The source types ggml-cpu's get_rows has a case for; anything else aborts.
    const bool src_type =
        is_float(a->type) || a->type == GGML_TYPE_I32 || cpu_reads_quantized(a->type);
    const bool types =
        src_type && b->type == GGML_TYPE_I32 &&
        (d->type == GGML_TYPE_F32 || (d->type == a->type && a->type == GGML_TYPE_I32));
    return ok_if(shapes && types && elem_stride(d) && elem_stride(a));
}

Code check_set_rows(const ggml_tensor* d) {
    const ggml_tensor* a = d->src[0]; // the rows written (ggml: b)
    const ggml_tensor* idx = d->src[1];
    if (!a || !idx) return Code::bad_tensor;
    if (idx->ne[0] == 0 || idx->ne[1] == 0 || idx->ne[2] == 0) return Code::bad_tensor;
    const bool shapes = d->ne[0] == a->ne[0] && d->ne[2] == a->ne[2] && d->ne[3] == a->ne[3] &&
                        a->ne[1] == idx->ne[0] && a->ne[2] % idx->ne[1] == 0 &&
                        a->ne[3] % idx->ne[2] == 0 && idx->ne[3] == 1;
    // The destination is written through its from_float: floats or a type ggml-cpu quantizes.
    const bool types = (a->type == GGML_TYPE_F32 || a->type == GGML_TYPE_F16) &&
                       (idx->type == GGML_TYPE_I64 || idx->type == GGML_TYPE_I32) &&
                       (is_float(d->type) || cpu_writes_quantized(d->type));
    return ok_if(shapes && types && ggml_is_contiguous_rows(a) && ggml_is_contiguous_rows(d));
}

// DUP, CONT, CPY: the type conversions ggml's CPU copy implements.
Code check_copy(const ggml_tensor* d) {
    const ggml_tensor* a = d->src[0];
    if (!a) return Code::bad_tensor;
    if (ggml_nelements(a) != ggml_nelements(d)) return Code::bad_tensor;
    if (d->op == GGML_OP_CPY) {
        // The node is ggml's view of b (ggml_cpy): some of ggml-cpu's copies take the
        // destination's strides from b, so b's layout must be the node's.
        const ggml_tensor* b = d->src[1];
        if (!b || b->type != d->type || !same_shape(b, d) || !ggml_are_same_stride(b, d))
            return Code::bad_tensor;
    }
    if (d->op == GGML_OP_CONT && !ggml_is_contiguous(d)) return Code::bad_tensor;
    const ggml_type ta = a->type, td = d->type;
    const bool qa = ggml_is_quantized(ta), qd = ggml_is_quantized(td);
    if (ta == td) return ok_if(!qa || (ggml_is_contiguous(a) && ggml_is_contiguous(d)));
    if (is_float(ta) && (is_float(td) || (ta == GGML_TYPE_F32 && td == GGML_TYPE_I32)))
        return Code::ok;
    if (ta == GGML_TYPE_I32 && td == GGML_TYPE_F32) return Code::ok;
    // Into a quantized type, a source row at a time through a work row of the
    // destination's length: the rows must be as long, and the op one ggml-cpu plans that
    // work row for (CPY, DUP; not CONT, which in ggml never changes the type).
    if (is_float(ta) && qd)
        return ok_if(d->op != GGML_OP_CONT && cpu_writes_quantized(td) && ggml_is_contiguous(d) &&
                     elem_stride(a) && a->ne[0] == d->ne[0]);
    // Out of a quantized type, ggml-cpu walks the destination by src[1]'s shape: CPY only
    // (DUP and CONT have none; it would follow a null pointer).
    if (qa && td == GGML_TYPE_F32)
        return ok_if(d->op == GGML_OP_CPY && cpu_reads_quantized(ta) && ggml_is_contiguous(a) &&
                     ggml_is_contiguous(d));
    return Code::bad_tensor;
}

// Row-wise ops on F32 rows: RMS_NORM, NORM (an epsilon ggml asserts is >= 0, so not NaN),
// SCALE (ggml asserts both tensors contiguous).
Code check_rows_f32(const ggml_tensor* d) {
    const ggml_tensor* a = d->src[0];
    if (!a) return Code::bad_tensor;
    if (a->type != GGML_TYPE_F32 || d->type != GGML_TYPE_F32 || !same_shape(a, d) ||
        !elem_stride(a) || !elem_stride(d))
        return Code::bad_tensor;
    // SCALE's kernel walks the rows as one run (row i at i * nb1).
    if (d->op == GGML_OP_SCALE) return ok_if(packed(a) && packed(d));
    const float eps = param_f32(d, 0);
    return ok_if(eps >= 0.0f);
}

Code check_unary(const ggml_tensor* d) {
    const ggml_tensor* a = d->src[0];
    if (!a) return Code::bad_tensor;
    const int32_t u = param(d, 0);
    if (u < 0 || u >= GGML_UNARY_OP_COUNT) return Code::unsupported_op;
    return ok_if((a->type == GGML_TYPE_F32 || a->type == GGML_TYPE_F16) && d->type == a->type &&
                 same_shape(a, d) && ggml_is_contiguous_1(a) && ggml_is_contiguous_1(d));
}

Code check_glu(const ggml_tensor* d) {
    const ggml_tensor* a = d->src[0];
    const ggml_tensor* b = d->src[1];
    if (!a) return Code::bad_tensor;
    const int32_t g = param(d, 0);
    if (g < 0 || g >= GGML_GLU_OP_COUNT) return Code::unsupported_op;
    // ggml-cpu's SWIGLU_OAI has an F32 kernel only.
    if (g == GGML_GLU_OP_SWIGLU_OAI && a->type != GGML_TYPE_F32) return Code::bad_tensor;
    if ((a->type != GGML_TYPE_F32 && a->type != GGML_TYPE_F16) || d->type != a->type ||
        !ggml_is_contiguous_1(a) || !ggml_is_contiguous_1(d))
        return Code::bad_tensor;
    if (b && (!same_shape(a, b) || b->type != a->type || !ggml_is_contiguous_1(b)))
        return Code::bad_tensor;
    const int64_t nc = b ? a->ne[0] : a->ne[0] / 2;
    return ok_if(d->ne[0] == nc && d->ne[1] == a->ne[1] && d->ne[2] == a->ne[2] &&
                 d->ne[3] == a->ne[3]);
}

// FLASH_ATTN_EXT: q (F32) against k and v, with an optional F16 mask and F32 sinks. What
// ggml_flash_attn_ext and ggml_flash_attn_ext_add_sinks assert, and what ggml-cpu's kernels
// assume without asserting it:
// - q is read as F32 rows whatever its type;
// - k and v are read for every query at the key row it counts (up to k's ne1), at the head
//   that broadcasts to the query's (q's heads a multiple of theirs);
// - the mask is read as F16 at rows up to q's ne1 and columns up to k's ne1, its heads and
//   batches taken modulo its own (so none may be 0);
// - the sinks are read at every query head;
// - the output is written by rows at indices made from its ne alone, so it must be the
//   contiguous [v's ne0, q's heads, q's rows, q's batches] ggml makes;
// - query rows are counted in int.
// k and v rows may not overlap (nb1 at least a row): the key count is then bounded by
// their memory, and so is the work a graph can ask for.
// Head sizes of real models go to 576 (keys) and 512 (values).
constexpr int64_t max_head_size = 4096;

Code check_flash_attn(const ggml_tensor* d) {
    const ggml_tensor* q = d->src[0];
    const ggml_tensor* k = d->src[1];
    const ggml_tensor* v = d->src[2];
    const ggml_tensor* mask = d->src[3];
    const ggml_tensor* sinks = d->src[4];
    if (!q || !k || !v) return Code::bad_tensor;
    const int32_t prec = param(d, 3);
    if (prec != GGML_PREC_DEFAULT && prec != GGML_PREC_F32) return Code::bad_tensor;
    if (q->type != GGML_TYPE_F32 || d->type != GGML_TYPE_F32) return Code::bad_tensor;
    const auto kv_type = [](ggml_type t) { return is_float(t) || cpu_reads_quantized(t); };
    if (!kv_type(k->type) || !kv_type(v->type)) return Code::bad_tensor;
    if (!elem_stride(q) || !elem_stride(k) || !elem_stride(v)) return Code::bad_tensor;
    if (k->nb[1] < ggml_row_size(k->type, k->ne[0]) || v->nb[1] < ggml_row_size(v->type, v->ne[0]))
        return Code::bad_tensor;
    for (const ggml_tensor* kv : {k, v})
        if (kv->ne[2] == 0 || kv->ne[3] == 0 || q->ne[2] % kv->ne[2] != 0 ||
            kv->ne[3] != q->ne[3] || kv->ne[1] != k->ne[1])
            return Code::bad_tensor;
    if (q->ne[0] != k->ne[0]) return Code::bad_tensor;
    // ggml-cpu sizes the work buffer from the head sizes and head count even for an
    // empty node it then skips: no empty output (its heads are then bounded by its
    // memory), head sizes up to max_head_size.
    if (ggml_is_empty(d) || k->ne[0] > max_head_size || v->ne[0] > max_head_size)
        return Code::bad_tensor;
    if (d->ne[0] != v->ne[0] || d->ne[1] != q->ne[2] || d->ne[2] != q->ne[1] ||
        d->ne[3] != q->ne[3] || !ggml_is_contiguous(d))
        return Code::bad_tensor;
    if (ggml_nrows(q) > INT32_MAX) return Code::bad_tensor;
    if (mask) {
        if (mask->type != GGML_TYPE_F16 || !ggml_is_contiguous(mask) || mask->ne[0] < k->ne[1] ||
            mask->ne[1] < q->ne[1] || mask->ne[2] == 0 || mask->ne[3] == 0 ||
            q->ne[2] % mask->ne[2] != 0 || q->ne[3] % mask->ne[3] != 0)
            return Code::bad_tensor;
    } else if (param_f32(d, 1) > 0.0f) {
        return Code::bad_tensor; // ggml asserts a mask with ALiBi (max_bias > 0)
    }
    if (sinks && (sinks->type != GGML_TYPE_F32 || sinks->ne[0] != q->ne[2] || !elem_stride(sinks)))
        return Code::bad_tensor;
    return Code::ok;
}

// VIEW, RESHAPE, PERMUTE, TRANSPOSE, NONE: nothing is computed (the data is where the
// layout check put it).
Code check_no_compute(const ggml_tensor* d) {
    return ok_if(d->op == GGML_OP_NONE || d->src[0] != nullptr);
}

} // namespace

Code check_op(const ggml_tensor& node) noexcept {
    const ggml_tensor* d = &node;
    switch (node.op) {
    case GGML_OP_NONE:
    case GGML_OP_VIEW:
    case GGML_OP_RESHAPE:
    case GGML_OP_PERMUTE:
    case GGML_OP_TRANSPOSE:
        return check_no_compute(d);
    case GGML_OP_ADD:
    case GGML_OP_SUB:
    case GGML_OP_MUL:
    case GGML_OP_DIV:
        return check_binary(d);
    case GGML_OP_MUL_MAT:
        return check_mul_mat(d);
    case GGML_OP_SOFT_MAX:
        return check_soft_max(d);
    case GGML_OP_ROPE:
        return check_rope(d);
    case GGML_OP_GET_ROWS:
        return check_get_rows(d);
    case GGML_OP_SET_ROWS:
        return check_set_rows(d);
    case GGML_OP_DUP:
    case GGML_OP_CONT:
    case GGML_OP_CPY:
        return check_copy(d);
    case GGML_OP_RMS_NORM:
    case GGML_OP_NORM:
    case GGML_OP_SCALE:
        return check_rows_f32(d);
    case GGML_OP_UNARY:
        return check_unary(d);
    case GGML_OP_GLU:
        return check_glu(d);
    case GGML_OP_FLASH_ATTN_EXT:
        return check_flash_attn(d);
    default:
        return Code::unsupported_op;
    }
}

IndexRule index_rule(const ggml_tensor& node) noexcept {
    if (node.op == GGML_OP_GET_ROWS && node.src[0] && node.src[1])
        return {node.src[1], node.src[0]->ne[1]};
    if (node.op == GGML_OP_SET_ROWS && node.src[1]) return {node.src[1], node.ne[1]};
    return {};
}

bool indices_in_range(const IndexRule& rule) noexcept {
    const ggml_tensor* t = rule.indices;
    if (!t || !t->buffer) return false;
    const bool i64 = t->type == GGML_TYPE_I64;
    if (!i64 && t->type != GGML_TYPE_I32) return false;
    for (int64_t i3 = 0; i3 < t->ne[3]; ++i3)
        for (int64_t i2 = 0; i2 < t->ne[2]; ++i2)
            for (int64_t i1 = 0; i1 < t->ne[1]; ++i1) {
                const size_t base = static_cast<size_t>(i1) * t->nb[1] +
                                    static_cast<size_t>(i2) * t->nb[2] +
                                    static_cast<size_t>(i3) * t->nb[3];
                // Through the buffer's interface (the device may not be in host memory),
                // a run of a row at a time where its elements are packed.
                const size_t es = i64 ? 8 : 4;
                std::array<std::byte, 4096> run;
                const int64_t per_run = t->nb[0] == es ? int64_t(run.size() / es) : 1;
                for (int64_t i0 = 0; i0 < t->ne[0]; i0 += per_run) {
                    const int64_t n = std::min(per_run, t->ne[0] - i0);
                    const size_t at = base + static_cast<size_t>(i0) * t->nb[0];
                    ggml_backend_tensor_get(t, run.data(), at, static_cast<size_t>(n) * es);
                    for (int64_t j = 0; j < n; ++j) {
                        int64_t v = 0;
                        if (i64) {
                            std::memcpy(&v, run.data() + j * 8, 8);
                        } else {
                            int32_t v32 = 0;
                            std::memcpy(&v32, run.data() + j * 4, 4);
                            v = v32;
                        }
                        if (v < 0 || v >= rule.rows) return false;
                    }
                }
            }
    return true;
}

bool op_computes(ggml_op op) noexcept {
    switch (op) {
    case GGML_OP_NONE:
    case GGML_OP_VIEW:
    case GGML_OP_RESHAPE:
    case GGML_OP_PERMUTE:
    case GGML_OP_TRANSPOSE:
        return false;
    default:
        return true;
    }
}

uint64_t node_work(const ggml_tensor& node) noexcept {
    int64_t n = ggml_nelements(&node);
    if (n < 0) n = 0;
    const auto out = static_cast<uint64_t>(n);
    if ((node.op == GGML_OP_MUL_MAT || node.op == GGML_OP_MUL_MAT_ID) && node.src[0] &&
        node.src[0]->ne[0] > 0) {
        const auto k = static_cast<uint64_t>(node.src[0]->ne[0]);
        return out > UINT64_MAX / k ? UINT64_MAX : out * k;
    }
    if (node.op == GGML_OP_FLASH_ATTN_EXT && node.src[1] && node.src[1]->ne[1] > 0) {
        // Each output row: a dot product with every key and a sum of as many value rows.
        const auto keys = static_cast<uint64_t>(node.src[1]->ne[1]);
        return out > UINT64_MAX / keys / 2 ? UINT64_MAX : out * keys * 2;
    }
    return out;
}

int threads_for_work(uint64_t work, uint64_t steps, int max_threads) noexcept {
    if (max_threads <= 1 || steps == 0) return 1;
    const uint64_t per_step = work / steps;
    const uint64_t t = per_step / work_per_thread_step;
    if (t <= 1) return 1;
    return t >= static_cast<uint64_t>(max_threads) ? max_threads : static_cast<int>(t);
}

} // namespace apir::ggml_host
