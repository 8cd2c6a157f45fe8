// libggml-apir-host's choice of device threads per graph (src/libggml-apir-host/checks.hpp): the
// work it counts per node and the thread count it derives. Pure functions, no device.
#include "catch.hpp"

#include "checks.hpp"

#include <ggml.h>

#include <cstdint>

using namespace apir::ggml_host;

namespace {
ggml_tensor tensor(ggml_op op, int64_t ne0, int64_t ne1 = 1, int64_t ne2 = 1, int64_t ne3 = 1) {
    ggml_tensor t{};
    t.type = GGML_TYPE_F32;
    t.op = op;
    t.ne[0] = ne0, t.ne[1] = ne1, t.ne[2] = ne2, t.ne[3] = ne3;
    return t;
}
} // namespace

TEST_CASE("host threads: ops that the device only reinterprets do not compute") {
    for (ggml_op op :
         {GGML_OP_NONE, GGML_OP_VIEW, GGML_OP_RESHAPE, GGML_OP_PERMUTE, GGML_OP_TRANSPOSE})
        CHECK_FALSE(op_computes(op));
    for (ggml_op op : {GGML_OP_ADD, GGML_OP_MUL_MAT, GGML_OP_CPY, GGML_OP_GET_ROWS,
                       GGML_OP_SOFT_MAX, GGML_OP_CONT})
        CHECK(op_computes(op));
}

TEST_CASE("host threads: a matrix product's work is its multiply-adds, attention's its "
          "keys', another node's its elements") {
    ggml_tensor a = tensor(GGML_OP_NONE, 256, 32000); // weights: 32000 rows of 256
    ggml_tensor b = tensor(GGML_OP_NONE, 256, 7);     // 7 tokens
    ggml_tensor mm = tensor(GGML_OP_MUL_MAT, 32000, 7);
    mm.src[0] = &a, mm.src[1] = &b;
    CHECK(node_work(mm) == uint64_t{32000} * 7 * 256);
    ggml_tensor add = tensor(GGML_OP_ADD, 256, 7, 2);
    add.src[0] = &b, add.src[1] = &b;
    CHECK(node_work(add) == 256 * 7 * 2);
    // Attention: each output element a dot product and a sum over every key (k's ne1).
    ggml_tensor q = tensor(GGML_OP_NONE, 64, 7, 8), k = tensor(GGML_OP_NONE, 64, 512, 2);
    ggml_tensor fa = tensor(GGML_OP_FLASH_ATTN_EXT, 64, 8, 7);
    fa.src[0] = &q, fa.src[1] = &k, fa.src[2] = &k;
    CHECK(node_work(fa) == uint64_t{64} * 8 * 7 * 512 * 2);
    // Saturates instead of wrapping.
    ggml_tensor huge_a = tensor(GGML_OP_NONE, int64_t{1} << 40);
    ggml_tensor huge = tensor(GGML_OP_MUL_MAT, int64_t{1} << 30, int64_t{1} << 30);
    huge.src[0] = &huge_a;
    CHECK(node_work(huge) == UINT64_MAX);
}

TEST_CASE("host threads: small graphs run on one thread, large ones on up to the maximum") {
    const uint64_t unit = work_per_thread_step;
    // A token of a small model (the llama test's: ~11 M multiply-adds in 93 nodes): one
    // thread, whatever the maximum.
    CHECK(threads_for_work(11'353'600, 93, 2) == 1);
    CHECK(threads_for_work(11'353'600, 93, 64) == 1);
    // Its prompt of 128 tokens: every thread there is (here 2).
    CHECK(threads_for_work(329'320'960, 93, 2) == 2);
    // One thread per unit of work per node, within [1, max].
    CHECK(threads_for_work(3 * unit * 10, 10, 8) == 3);
    CHECK(threads_for_work(100 * unit * 10, 10, 8) == 8);
    CHECK(threads_for_work(unit * 10 - 1, 10, 8) == 1);
    CHECK(threads_for_work(2 * unit * 10, 10, 8) == 2);
    // Degenerate inputs: one thread.
    CHECK(threads_for_work(0, 0, 8) == 1);
    CHECK(threads_for_work(UINT64_MAX, 0, 8) == 1);
    CHECK(threads_for_work(UINT64_MAX, 1, 8) == 8);
    CHECK(threads_for_work(UINT64_MAX, 1, 1) == 1);
    CHECK(threads_for_work(UINT64_MAX, 1, 0) == 1);
}
