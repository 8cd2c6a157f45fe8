// The bench backend: an APIR backend library whose commands model what a ggml host
// backend does on the hot paths apir-bench measures (an empty call, a small typed
// call, a set_tensor that copies out of shared memory, a slow host).
#include "bench_protocol.hpp"

#include <apir/backend.hpp>
#include <apir/wire.hpp>

#include <cstring>
#include <ctime>
#include <memory>
#include <new>

namespace {

using namespace bench;

constexpr uint64_t max_tensor_bytes = uint64_t{1} << 30; // the peer sizes it: cap it

// The host-side "tensor" set_tensor copies into (prefaulted when allocated).
struct State {
    std::unique_ptr<std::byte[]> tensor;
    size_t tensor_size = 0;
};
using Contexts = apir::ContextRegistry<State>;
using Context = Contexts::Context;
Contexts g_contexts;

RangeEnds ends(const std::byte* p, size_t n) {
    RangeEnds e;
    if (n >= 8) {
        std::memcpy(&e.first, p, 8);
        std::memcpy(&e.last, p + n - 8, 8);
    }
    return e;
}

void sleep_us(uint32_t us) {
    timespec t{};
    clock_gettime(CLOCK_MONOTONIC, &t);
    const long ns = t.tv_nsec + static_cast<long>(us % 1'000'000) * 1000;
    t.tv_sec += static_cast<time_t>(us / 1'000'000) + ns / 1'000'000'000;
    t.tv_nsec = ns % 1'000'000'000;
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &t, nullptr) != 0) {
    }
}

uint32_t nop(Context&, apir::BackendFrame&) {
    return 0;
}

uint32_t add(Context&, apir::BackendFrame& f) {
    AddRequest req;
    if (!f.request().get_into(req)) return error_bad_request;
    f.reply().put(AddReply{req.a + req.b});
    return 0;
}

// The bytes are already where the host can use them: read them in place.
uint32_t consume(Context& c, apir::BackendFrame& f) {
    BlobRange req;
    if (!f.request().get_into(req)) return error_bad_request;
    auto blob = c.resolve(req.res_id, req.offset, req.size);
    if (blob.data() == nullptr) return error_bad_resource;
    f.reply().put(ends(blob.data(), blob.size()));
    return 0;
}

// ggml's set_tensor on a CPU buffer: one memcpy from shared memory.
uint32_t set_tensor(Context& c, apir::BackendFrame& f) {
    BlobRange req;
    if (!f.request().get_into(req)) return error_bad_request;
    auto blob = c.resolve(req.res_id, req.offset, req.size);
    if (blob.data() == nullptr) return error_bad_resource;
    if (blob.size() > c.state.tensor_size) return error_no_tensor;
    std::memcpy(c.state.tensor.get(), blob.data(), blob.size());
    f.reply().put(ends(c.state.tensor.get(), blob.size()));
    return 0;
}

uint32_t alloc_tensor(Context& c, apir::BackendFrame& f) {
    AllocTensorRequest req;
    if (!f.request().get_into(req)) return error_bad_request;
    if (req.bytes > max_tensor_bytes) return error_bad_request;
    const auto n = static_cast<size_t>(req.bytes);
    c.state.tensor.reset(new (std::nothrow) std::byte[n]);
    c.state.tensor_size = 0;
    if (!c.state.tensor) return error_no_tensor;
    std::memset(c.state.tensor.get(), 0, n); // touch every page now, not during a copy
    c.state.tensor_size = n;
    return 0;
}

uint32_t work(Context&, apir::BackendFrame& f) {
    WorkRequest req;
    if (!f.request().get_into(req)) return error_bad_request;
    sleep_us(req.microseconds);
    return 0;
}

constexpr auto g_table = [] {
    apir::DispatchTable<Context, cmd_work + 1> t(
        {.reply_overflow = error_reply_overflow, .no_context = error_bad_resource});
    t.on(cmd_nop, &nop)
        .on(cmd_add, &add)
        .on(cmd_consume, &consume)
        .on(cmd_set_tensor, &set_tensor)
        .on(cmd_alloc_tensor, &alloc_tensor)
        .on(cmd_work, &work);
    return t;
}();

} // namespace

APIR_BACKEND_CONTEXT_ENTRY_POINTS(g_contexts)
APIR_BACKEND_DISPATCHER(g_contexts, g_table)
