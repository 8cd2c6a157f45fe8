// The bench backend's remote functions, shared by apir-bench (typed calls) and the
// backend library the loopback host loads (bench_backend.cpp).
#pragma once

#include <apir/call.hpp>

#include <array>
#include <cstdint>

namespace bench {

enum Command : uint32_t {
    cmd_nop = 0,        // empty request, empty reply: the bare round trip
    cmd_add = 1,        // a small typed call
    cmd_consume = 2,    // resolve a blob range and read it in place
    cmd_set_tensor = 3, // copy a blob range into a host-owned tensor (ggml's set_tensor)
    cmd_alloc_tensor = 4,
    cmd_work = 5, // the host is busy for a while (sleeps), then answers
};

struct AddRequest {
    uint64_t a = 0;
    uint64_t b = 0;
    static constexpr auto wire_fields = apir::fields(&AddRequest::a, &AddRequest::b);
};
struct AddReply {
    uint64_t sum = 0;
    static constexpr auto wire_fields = apir::fields(&AddReply::sum);
};

/// A range of a shared-memory blob, named by resource id.
struct BlobRange {
    uint32_t res_id = 0;
    uint64_t offset = 0;
    uint64_t size = 0;
    static constexpr auto wire_fields =
        apir::fields(&BlobRange::res_id, &BlobRange::offset, &BlobRange::size);
};
/// The first and last 8 bytes of a range as the host saw them (a correctness check).
struct RangeEnds {
    uint64_t first = 0;
    uint64_t last = 0;
    static constexpr auto wire_fields = apir::fields(&RangeEnds::first, &RangeEnds::last);
};

struct AllocTensorRequest {
    uint64_t bytes = 0;
    static constexpr auto wire_fields = apir::fields(&AllocTensorRequest::bytes);
};

struct WorkRequest {
    uint32_t microseconds = 0;
    static constexpr auto wire_fields = apir::fields(&WorkRequest::microseconds);
};

/// The backend's own return codes.
inline constexpr uint32_t error_bad_request = 1;
inline constexpr uint32_t error_bad_resource = 2;
inline constexpr uint32_t error_no_tensor = 3;
inline constexpr uint32_t error_reply_overflow = 4;

using Nop = apir::Forward<cmd_nop, apir::Empty>;
using Add = apir::Forward<cmd_add, AddRequest, AddReply>;
using Consume = apir::Forward<cmd_consume, BlobRange, RangeEnds>;
using SetTensor = apir::Forward<cmd_set_tensor, BlobRange, RangeEnds>;
using AllocTensor = apir::Forward<cmd_alloc_tensor, AllocTensorRequest>;
using Work = apir::Forward<cmd_work, WorkRequest>;

} // namespace bench
