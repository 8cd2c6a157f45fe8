// libggml-apir-host: an APIR backend library answering ggml's 23 commands (PROTOCOL.md §7)
// over a ggml device, with nothing a guest sends trusted (docs/GGML-HOST.md).
//
// State is per context (apir::ContextRegistry): the ggml device and backend, the buffers
// this context allocated (looked up by opaque handles, never dereferenced), the graphs it
// built (graph_cache.hpp: run again when the same bytes come back). Every handler is bound
// to the guest's call type (apir/ggml/commands.hpp) through the kit's typed table, except
// the two whose request is ggml's raw tensor.
#include "checks.hpp"
#include "graph_cache.hpp"

#include <apir/backend.hpp>
#include <apir/ggml/commands.hpp>
#include <apir/ggml/graph.hpp>

#include <ggml-backend-impl.h>
#include <ggml-backend.h>
#include <ggml-cpu.h>
#include <ggml.h>

#include <dlfcn.h>
#include <sched.h>
#include <sys/random.h>
#include <time.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

namespace apir::ggml_host {
namespace {

namespace g = apir::ggml;
using g::BufferHandle;
using g::BufferTypeHandle;

/// Configuration keys (beside ggml's ggml.library.path / ggml.library.reg).
constexpr const char* config_threads = "ggml.cpu.threads";
/// Bytes of buffers one context may hold (default: the device's total memory).
constexpr const char* config_max_memory = "ggml.host.max_memory";
/// A remote device through ggml's RPC backend: ggml.library.path names libggml-rpc, this
/// key the RPC server ("host:port"), ggml.rpc.device the server's device (default 0).
constexpr const char* config_rpc_endpoint = "ggml.rpc.endpoint";
constexpr const char* config_rpc_device = "ggml.rpc.device";

/// Buffers one context may hold at once (each handle indexes a slot); a configuration key
/// may lower it.
constexpr uint64_t max_buffers = (uint64_t{1} << 20) - 1;
constexpr const char* config_max_buffers = "ggml.host.max_buffers";
/// Graphs one context keeps built for a compute of the same bytes (default 64, within
/// 64 MiB; 0: none).
constexpr const char* config_graph_cache = "ggml.host.graph_cache";
/// A buffer handle: bit 63, the context's salt (bits 40..62), the slot's generation (bits
/// 20..39) and the slot (bits 0..19, never 0). A freed slot is reused with the next
/// generation, so a stale handle stays unknown; a slot whose generation would wrap is retired.
constexpr unsigned slot_bits = 20;
constexpr uint64_t slot_mask = (uint64_t{1} << slot_bits) - 1;
constexpr uint32_t max_generation = (uint32_t{1} << slot_bits) - 1;
/// A graph blob larger than this is refused before anything is copied.
constexpr uint64_t max_graph_bytes = uint64_t{1} << 31;
/// The most work buffer a graph may need from ggml-cpu at the most threads (a prompt of
/// 8192 tokens of 16384 floats converted to F16 for a matrix product: 256 MiB).
constexpr size_t max_work_bytes = size_t{1} << 30;
/// What buffer_get_base answers: a per-buffer address that is not a host address (the
/// guest only ever subtracts it), 2^40 bytes apart so that no two buffers' ranges meet.
constexpr uint64_t fake_base_shift = 40;

void log(const char* what, const char* detail = "") {
    std::fprintf(stderr, "ggml-apir-host: %s%s%s\n", what, detail[0] ? ": " : "", detail);
}

/// One line per refused node: the guest's frontend may abort on the refusal, and this
/// says which op it was.
void log_refusal(Code e, const ggml_tensor* n) {
    std::fprintf(stderr,
                 "ggml-apir-host: graph refused: %s: node %s (%s, %s [%lld,%lld,%lld,%lld])",
                 code_name(e).data(), n->name, ggml_op_name(n->op), ggml_type_name(n->type),
                 static_cast<long long>(n->ne[0]), static_cast<long long>(n->ne[1]),
                 static_cast<long long>(n->ne[2]), static_cast<long long>(n->ne[3]));
    for (const ggml_tensor* s : n->src)
        if (s)
            std::fprintf(stderr, " src %s [%lld,%lld,%lld,%lld]", ggml_type_name(s->type),
                         static_cast<long long>(s->ne[0]), static_cast<long long>(s->ne[1]),
                         static_cast<long long>(s->ne[2]), static_cast<long long>(s->ne[3]));
    std::fprintf(stderr, "\n");
}

uint64_t random_salt() {
    uint64_t v = 0;
    if (getrandom(&v, sizeof v, GRND_NONBLOCK) != sizeof v) {
        timespec ts{};
        clock_gettime(CLOCK_MONOTONIC, &ts);
        v = static_cast<uint64_t>(ts.tv_nsec) * 0x9e3779b97f4a7c15ull ^
            reinterpret_cast<uintptr_t>(&v);
    }
    return (v << 40) | (uint64_t{1} << 63); // the top bits: generation and slot fill the rest
}

int usable_cpus() {
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof set, &set) != 0) return 1;
    const int n = CPU_COUNT(&set);
    return n > 0 ? n : 1;
}

/// A number of the host's configuration: absent (out keeps its default), or decimal
/// digits in [min, max]; anything else is logged (what: key) and fails.
template <class C>
bool config_number(C& c, const char* key, uint64_t min, uint64_t max, const char* what,
                   uint64_t& out) {
    const char* v = c.config(key);
    if (!v) return true;
    char* end = nullptr;
    errno = 0;
    const unsigned long long n = std::strtoull(v, &end, 10);
    if (v[0] < '0' || v[0] > '9' || end == v || *end != '\0' || errno == ERANGE || n < min ||
        n > max) {
        log(what, key);
        return false;
    }
    out = n;
    return true;
}

struct Buffer {
    ggml_backend_buffer_t buffer = nullptr;
    char* base = nullptr; ///< ggml's base (host memory for host buffers)
    uint64_t size = 0;
    uint64_t fake_base = 0;
    bool from_ptr = false; ///< lives in a guest blob (device_buffer_from_ptr)
    uint32_t res_id = 0;
};

struct State {
    State() = default;
    State(const State&) = delete;
    State& operator=(const State&) = delete;
    ~State() {
        if (graph_computes > 0) {
            char line[128];
            std::snprintf(line, sizeof line, "%llu graphs computed, %llu of them reused",
                          static_cast<unsigned long long>(graph_computes),
                          static_cast<unsigned long long>(graph_reuses));
            log("context closed", line);
        }
        if (timed_runs > 0) {
            char line[192];
            std::snprintf(line, sizeof line,
                          "%llu runs timed, %llu of them on more threads than their work "
                          "asks, %llu measurements, %llu falls back",
                          static_cast<unsigned long long>(timed_runs),
                          static_cast<unsigned long long>(raised_runs),
                          static_cast<unsigned long long>(thread_measurements),
                          static_cast<unsigned long long>(thread_fallbacks));
            log("thread floors", line);
        }
        graphs.clear(); // before the buffers their tensors name
        for (auto& [h, b] : buffers)
            ggml_backend_buffer_free(b.buffer);
        if (backend) ggml_backend_free(backend);
    }

    template <class C>
    bool open(C& c) noexcept {
        try {
            return open_impl(c);
        } catch (...) {
            log("initialization failed: out of memory");
            return false;
        }
    }

    template <class C>
    bool open_impl(C& c) {
        const char* path = c.config(config_ggml_library_path.data());
        const char* reg_name = c.config(config_ggml_library_reg.data());
        if (!path) {
            log("no configuration", "ggml.library.path");
            return false;
        }
        if (!reg_name) reg_name = "ggml_backend_init";
        // Never unloaded: ggml's backends keep process-wide state and threads.
        void* lib = dlopen(path, RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE);
        if (!lib) {
            log("cannot open the ggml library", dlerror());
            return false;
        }
        size_t device_index = 0;
        if (const char* endpoint = c.config(config_rpc_endpoint)) {
            // ggml's RPC backend: one registration per server, its devices the server's.
            using add_server_fn = ggml_backend_reg_t (*)(const char*);
            auto add = reinterpret_cast<add_server_fn>(dlsym(lib, "ggml_backend_rpc_add_server"));
            dlclose(lib);
            if (!add) {
                log("ggml.rpc.endpoint is set, but ggml.library.path is not ggml's RPC backend "
                    "(no ggml_backend_rpc_add_server)",
                    path);
                return false;
            }
            uint64_t index = 0;
            if (!config_number(c, config_rpc_device, 0, 1023, "bad RPC device index", index))
                return false;
            device_index = index;
            reg = add(endpoint); // null when the server cannot be reached or has no device
            if (!reg) {
                log("no RPC server with a device at", endpoint);
                return false;
            }
        } else {
            auto reg_fn = reinterpret_cast<ggml_backend_reg_t (*)()>(dlsym(lib, reg_name));
            // ggml-cpu's planner, to bound a graph's work buffer before the device runs it
            // (plan_fits); another device library has none.
            graph_plan =
                reinterpret_cast<decltype(&ggml_graph_plan)>(dlsym(lib, "ggml_graph_plan"));
            dlclose(lib); // NODELETE: the library stays, the reference goes
            if (!reg_fn) {
                log("the ggml library lacks its registration function", reg_name);
                return false;
            }
            reg = reg_fn();
        }
        if (!reg || ggml_backend_reg_dev_count(reg) <= device_index) {
            log("the ggml library registered no such device");
            return false;
        }
        dev = ggml_backend_reg_dev_get(reg, device_index);
        backend = dev ? ggml_backend_dev_init(dev, nullptr) : nullptr;
        buft = dev ? ggml_backend_dev_buffer_type(dev) : nullptr;
        if (!backend || !buft) {
            log("the ggml device did not initialize");
            return false;
        }
        uint64_t threads = static_cast<uint64_t>(usable_cpus());
        const bool fixed_threads = c.config(config_threads) != nullptr;
        if (!config_number(c, config_threads, 1, 1024, "bad thread count", threads)) return false;
        set_threads = reinterpret_cast<ggml_backend_set_n_threads_t>(
            ggml_backend_reg_get_proc_address(reg, "ggml_backend_set_n_threads"));
        if (set_threads) set_threads(backend, static_cast<int>(threads));
        adapt_threads = set_threads && !fixed_threads;
        max_threads = threads_now = static_cast<int>(threads);
        size_t free_mem = 0, total_mem = 0;
        ggml_backend_dev_memory(dev, &free_mem, &total_mem);
        max_memory = total_mem;
        uint64_t kept_graphs = graphs.capacity();
        if (!config_number(c, config_max_memory, 0, UINT64_MAX, "bad memory limit", max_memory) ||
            !config_number(c, config_max_buffers, 1, max_buffers, "bad buffer count",
                           buffer_limit) ||
            !config_number(c, config_graph_cache, 0, 1024, "bad graph count", kept_graphs))
            return false;
        graphs.set_capacity(kept_graphs);
        salt = random_salt();
        return true;
    }

    [[nodiscard]] uint64_t buft_handle() const noexcept { return salt; }

    /// Whether take_slot() has a slot to give.
    [[nodiscard]] bool slot_available() const noexcept {
        return !free_slots.empty() || next_slot <= buffer_limit;
    }
    /// A free slot and the handle naming it (slot_available() first).
    uint64_t take_slot(uint64_t& slot) {
        if (!free_slots.empty()) {
            slot = free_slots.back();
            free_slots.pop_back();
        } else {
            slot = next_slot++;
            generation.push_back(0); // generation[slot - 1]
        }
        return salt | (uint64_t{generation[slot - 1]} << slot_bits) | slot;
    }
    /// Gives back the slot of a freed buffer's handle.
    void release_slot(uint64_t handle) {
        const uint64_t slot = handle & slot_mask;
        if (++generation[slot - 1] < max_generation)
            free_slots.push_back(static_cast<uint32_t>(slot));
    }

    ggml_backend_reg_t reg = nullptr;
    ggml_backend_dev_t dev = nullptr;
    ggml_backend_t backend = nullptr;
    /// ggml-cpu's ggml_graph_plan, when the device library is ggml-cpu.
    decltype(&ggml_graph_plan) graph_plan = nullptr;
    /// The device's thread count, when it has one (ggml_backend_set_n_threads): at most
    /// max_threads; with adapt_threads (ggml.cpu.threads unset), chosen per graph by
    /// its work (threads_for_work) and, for a graph run again, by timing it
    /// (thread_tuner.hpp), else always max_threads.
    ggml_backend_set_n_threads_t set_threads = nullptr;
    int max_threads = 1;
    int threads_now = 1;
    bool adapt_threads = false;
    uint64_t timed_runs = 0;          ///< runs of graphs whose tuner has candidates
    uint64_t raised_runs = 0;         ///< of those, run above their work-based count
    uint64_t thread_measurements = 0; ///< the tuners' measurements completed
    uint64_t thread_fallbacks = 0;    ///< and their returns to the least floor
    ggml_backend_buffer_type_t buft = nullptr;
    uint64_t salt = 0;
    uint64_t next_slot = 1;              ///< the first never-used slot
    uint64_t buffer_limit = max_buffers; ///< slots this context may use
    std::vector<uint32_t> free_slots;    ///< freed slots, for reuse
    std::vector<uint32_t> generation;    ///< per slot (index slot - 1)
    uint64_t max_memory = 0;             ///< bytes of buffers this context may hold
    uint64_t allocated = 0;              ///< bytes of buffers it holds
    std::unordered_map<uint64_t, Buffer> buffers;
    std::unordered_set<ggml_backend_buffer_t> guest_backed; ///< the from_ptr buffers

    /// Graphs built, kept for a compute of the same bytes (graph_cache.hpp).
    GraphCache graphs;
    uint64_t graph_computes = 0; ///< graph_compute requests that reached a build or a reuse
    uint64_t graph_reuses = 0;
    // Scratch of a graph's decoding, reused between builds.
    std::vector<uint64_t> nodes;
    std::vector<g::RpcTensor> tensors;
    std::vector<ggml_tensor*> made;
    std::vector<uint8_t> is_node;
    std::unordered_map<uint64_t, uint32_t> index;
};

using Contexts = ContextRegistry<State>;
using Context = Contexts::Context;
Contexts g_contexts;

// ---------------------------------------------------------------------------
// Handles and tensors

BufferHandle to_buffer_handle(uint64_t v) {
    return g::detail::HandleAccess::make<g::BufferTag>(v);
}
BufferTypeHandle to_buft_handle(uint64_t v) {
    return g::detail::HandleAccess::make<g::BufferTypeTag>(v);
}

/// The buffer a handle names in this context, or null. A buffer living in a guest blob is
/// looked up again (the blob may have gone, or been replaced) and refused when it moved.
Buffer* find_buffer(Context& c, uint64_t handle) {
    auto it = c.state.buffers.find(handle);
    if (it == c.state.buffers.end()) return nullptr;
    Buffer& b = it->second;
    if (b.from_ptr) {
        std::span<std::byte> blob = c.resolve(b.res_id, 0, b.size);
        if (blob.empty() || reinterpret_cast<char*>(blob.data()) != b.base) return nullptr;
    }
    return &b;
}

bool known_buft(const Context& c, BufferTypeHandle h) {
    return !h.is_null() && h.value() == c.state.buft_handle();
}

/// A tensor of a transfer or copy: its layout, and its data inside its buffer.
struct Placed {
    Buffer* buffer = nullptr;
    uint64_t nbytes = 0;
};
Code place(Context& c, const g::RpcTensor& t, Placed& out) {
    Layout l;
    if (check_layout(t, l) != Code::ok) return Code::bad_tensor;
    if (t.buffer.is_null()) return Code::bad_tensor;
    Buffer* b = find_buffer(c, t.buffer.value());
    if (!b) return Code::unknown_handle;
    if (!range_inside(t.data, l.nbytes, b->size)) return Code::bad_tensor;
    out = {b, l.nbytes};
    return Code::ok;
}

/// A stack tensor ggml's buffer functions can use: the checked layout at base + data.
ggml_tensor host_tensor(const g::RpcTensor& t, const Buffer& b) {
    ggml_tensor r{};
    r.type = static_cast<ggml_type>(t.type);
    r.buffer = b.buffer;
    for (int i = 0; i < 4; ++i) {
        r.ne[i] = t.ne[i];
        r.nb[i] = t.nb[i];
    }
    r.data = b.base + t.data;
    return r;
}

// ---------------------------------------------------------------------------
// Device commands

Answer<g::I32Reply> device_count(Context&, const Empty&) {
    return g::I32Reply{1}; // one device: the library's first
}
Answer<g::StringReply> device_name(Context& c, const Empty&) {
    return g::StringReply{ggml_backend_dev_name(c.state.dev)};
}
Answer<g::StringReply> device_description(Context& c, const Empty&) {
    return g::StringReply{ggml_backend_dev_description(c.state.dev)};
}
Answer<g::U32Reply> device_type(Context& c, const Empty&) {
    return g::U32Reply{static_cast<uint32_t>(ggml_backend_dev_type(c.state.dev))};
}
Answer<g::MemoryReply> device_memory(Context& c, const Empty&) {
    size_t free = 0, total = 0;
    ggml_backend_dev_memory(c.state.dev, &free, &total);
    return g::MemoryReply{free, total};
}
Answer<g::BufferTypeReply> device_buffer_type(Context& c, const Empty&) {
    return g::BufferTypeReply{to_buft_handle(c.state.buft_handle())};
}
Answer<g::PropsReply> device_props(Context& c, const Empty&) {
    ggml_backend_dev_props p{};
    ggml_backend_dev_get_props(c.state.dev, &p);
    // No async calls and no events travel over this command set.
    return g::PropsReply{0, static_cast<uint8_t>(p.caps.host_buffer),
                         static_cast<uint8_t>(p.caps.buffer_from_host_ptr), 0, 0};
}

/// apir's extension query: zero-copy buffers when the device makes buffers from host
/// pointers (freed correctly here, unlike ggml's host backend, and checked against the
/// blob on every use).
Answer<g::CapabilitiesReply> capabilities(Context& c, const Empty&) {
    ggml_backend_dev_props p{};
    ggml_backend_dev_get_props(c.state.dev, &p);
    return g::CapabilitiesReply{1, p.caps.buffer_from_host_ptr ? g::capability_zero_copy_buffers
                                                               : uint64_t{0}};
}

Answer<g::BufferFromPtrReply> buffer_from_ptr(Context& c, const g::BufferFromPtrRequest& r) {
    State& s = c.state;
    if (r.size == 0 || r.max_tensor_size > r.size) return Refusal{raw(Code::bad_range)};
    std::span<std::byte> blob = c.resolve(r.res_id, 0, r.size);
    if (blob.empty()) return Refusal{raw(Code::bad_range)};
    // ggml's CPU buffers assert their alignment.
    if (reinterpret_cast<uintptr_t>(blob.data()) % 64 != 0) return Refusal{raw(Code::bad_range)};
    if (!s.slot_available()) return Refusal{raw(Code::no_memory)};
    ggml_backend_buffer_t buf =
        ggml_backend_dev_buffer_from_host_ptr(s.dev, blob.data(), r.size, r.max_tensor_size);
    if (!buf) return Refusal{raw(Code::no_memory)};
    uint64_t slot = 0;
    const uint64_t handle = s.take_slot(slot);
    s.buffers.emplace(handle, Buffer{buf, reinterpret_cast<char*>(blob.data()), r.size,
                                     slot << fake_base_shift, true, r.res_id});
    s.guest_backed.insert(buf);
    return g::BufferFromPtrReply{to_buffer_handle(handle), to_buft_handle(s.buft_handle())};
}

// ---------------------------------------------------------------------------
// Buffer types

Answer<g::StringReply> buft_name(Context& c, const g::BufferTypeRequest& r) {
    if (!known_buft(c, r.buffer_type)) return Refusal{raw(Code::unknown_handle)};
    return g::StringReply{ggml_backend_buft_name(c.state.buft)};
}
Answer<g::U64Reply> buft_alignment(Context& c, const g::BufferTypeRequest& r) {
    if (!known_buft(c, r.buffer_type)) return Refusal{raw(Code::unknown_handle)};
    return g::U64Reply{ggml_backend_buft_get_alignment(c.state.buft)};
}
Answer<g::U64Reply> buft_max_size(Context& c, const g::BufferTypeRequest& r) {
    if (!known_buft(c, r.buffer_type)) return Refusal{raw(Code::unknown_handle)};
    return g::U64Reply{ggml_backend_buft_get_max_size(c.state.buft)};
}
Answer<g::BufferReply> buft_alloc(Context& c, const g::AllocBufferRequest& r) {
    State& s = c.state;
    if (!known_buft(c, r.buffer_type)) return Refusal{raw(Code::unknown_handle)};
    // 0 is the protocol's "allocation failed".
    if (r.size > ggml_backend_buft_get_max_size(s.buft) || !s.slot_available() ||
        r.size > (uint64_t{1} << fake_base_shift) || s.allocated > s.max_memory ||
        r.size > s.max_memory - s.allocated)
        return g::BufferReply{};
    ggml_backend_buffer_t buf = ggml_backend_buft_alloc_buffer(s.buft, r.size);
    if (!buf) return g::BufferReply{};
    s.allocated += ggml_backend_buffer_get_size(buf);
    uint64_t slot = 0;
    const uint64_t handle = s.take_slot(slot);
    s.buffers.emplace(handle,
                      Buffer{buf, static_cast<char*>(ggml_backend_buffer_get_base(buf)),
                             ggml_backend_buffer_get_size(buf), slot << fake_base_shift, false, 0});
    return g::BufferReply{to_buffer_handle(handle)};
}

// ---------------------------------------------------------------------------
// Buffers

Answer<g::U64Reply> buffer_base(Context& c, const g::BufferRequest& r) {
    Buffer* b = find_buffer(c, r.buffer.value());
    if (!b) return Refusal{raw(Code::unknown_handle)};
    return g::U64Reply{b->fake_base};
}

/// set_tensor / get_tensor: the tensor placed in the named buffer, [offset, offset + size)
/// inside the tensor, the blob range inside the blob.
Code transfer(Context& c, const g::TensorTransferRequest& r, bool to_tensor) {
    Buffer* b = find_buffer(c, r.buffer.value());
    if (!b) return Code::unknown_handle;
    if (r.tensor.buffer != r.buffer) return Code::bad_tensor;
    Placed p;
    if (Code e = place(c, r.tensor, p); e != Code::ok) return e;
    if (!range_inside(r.offset, r.size, p.nbytes)) return Code::bad_range;
    if (r.size == 0) return Code::ok;
    std::span<std::byte> blob = c.resolve(r.res_id, 0, r.size);
    if (blob.empty()) return Code::bad_range;
    ggml_tensor t = host_tensor(r.tensor, *b);
    if (to_tensor)
        ggml_backend_tensor_set(&t, blob.data(), r.offset, r.size);
    else
        ggml_backend_tensor_get(&t, blob.data(), r.offset, r.size);
    return Code::ok;
}
Answer<Empty> set_tensor(Context& c, const g::TensorTransferRequest& r) {
    if (Code e = transfer(c, r, true); e != Code::ok) return Refusal{raw(e)};
    return Empty{};
}
Answer<Empty> get_tensor(Context& c, const g::TensorTransferRequest& r) {
    if (Code e = transfer(c, r, false); e != Code::ok) return Refusal{raw(e)};
    return Empty{};
}

/// Whether two tensors' bytes overlap, by address: two zero-copy buffers may be made over
/// the same guest memory.
bool overlaps(const ggml_tensor* a, const ggml_tensor* b) {
    const auto a0 = reinterpret_cast<uintptr_t>(a->data);
    const auto b0 = reinterpret_cast<uintptr_t>(b->data);
    return a0 < b0 + ggml_nbytes(b) && b0 < a0 + ggml_nbytes(a);
}

Answer<g::BoolReply> cpy_tensor(Context& c, const g::CopyTensorRequest& r) {
    Buffer* b = find_buffer(c, r.buffer.value());
    if (!b) return Refusal{raw(Code::unknown_handle)};
    if (r.dst.buffer != r.buffer) return Refusal{raw(Code::bad_tensor)};
    Placed src, dst;
    if (Code e = place(c, r.src, src); e != Code::ok) return Refusal{raw(e)};
    if (Code e = place(c, r.dst, dst); e != Code::ok) return Refusal{raw(e)};
    // ggml copies the source's bytes over the destination's.
    if (src.nbytes != dst.nbytes) return Refusal{raw(Code::bad_range)};
    ggml_tensor s = host_tensor(r.src, *src.buffer);
    ggml_tensor d = host_tensor(r.dst, *dst.buffer);
    // Overlapping bytes: ggml copies with memcpy (undefined for overlap; found by
    // fuzz-ggml-host), whether in one buffer or in two over the same guest memory (two
    // zero-copy buffers over one blob range). The same bytes are a copy with nothing to do.
    if (overlaps(&s, &d)) {
        if (s.data == d.data) return g::BoolReply{1};
        return Refusal{raw(Code::bad_range)};
    }
    const bool done = ggml_backend_buffer_copy_tensor(&s, &d);
    return g::BoolReply{static_cast<uint8_t>(done)};
}

Answer<Empty> buffer_clear(Context& c, const g::ClearRequest& r) {
    Buffer* b = find_buffer(c, r.buffer.value());
    if (!b) return Refusal{raw(Code::unknown_handle)};
    if (b->size) ggml_backend_buffer_clear(b->buffer, r.value);
    return Empty{};
}

Answer<Empty> buffer_free(Context& c, const g::BufferRequest& r) {
    auto it = c.state.buffers.find(r.buffer.value());
    if (it == c.state.buffers.end()) return Refusal{raw(Code::unknown_handle)};
    // ggml_backend_buffer_free, not the interface's free: a buffer over a blob has none.
    c.state.guest_backed.erase(it->second.buffer);
    if (!it->second.from_ptr) c.state.allocated -= it->second.size;
    ggml_backend_buffer_free(it->second.buffer);
    c.state.release_slot(it->first);
    c.state.buffers.erase(it);
    return Empty{};
}

// ---------------------------------------------------------------------------
// Graphs

/// Whether a node computed over a source's memory does so in place, as ggml's allocator
/// places a node only over a parent of the same layout: the same data, type, ne and nb,
/// so that every row the kernel writes is the row it reads.
bool in_place(const ggml_tensor* n, const ggml_tensor* src) {
    if (n->data != src->data || n->type != src->type) return false;
    for (int i = 0; i < GGML_MAX_DIMS; ++i)
        if (n->ne[i] != src->ne[i] || n->nb[i] != src->nb[i]) return false;
    return true;
}

/// A node that writes over memory it reads while it runs: a copy (DUP, CONT, CPY) onto its
/// own source is memcpy's undefined case in ggml-cpu; a row op (GET_ROWS, SET_ROWS) writing
/// over its indices would read indices changed after they were checked; any other node
/// over a source it does not replace in place (RMS_NORM's row memcpy over its source one
/// float on: found by fuzz-ggml-host).
bool writes_over_its_input(const ggml_tensor* n) {
    const ggml_tensor* a = n->src[0];
    const ggml_tensor* b = n->src[1];
    switch (n->op) {
    case GGML_OP_DUP:
    case GGML_OP_CONT:
    case GGML_OP_CPY:
        return a && overlaps(n, a);
    case GGML_OP_GET_ROWS:
    case GGML_OP_SET_ROWS:
        return (a && overlaps(n, a)) || (b && overlaps(n, b));
    default:
        if (!op_computes(n->op)) return false;
        for (const ggml_tensor* src : n->src)
            if (src && overlaps(n, src) && !in_place(n, src)) return true;
        return false;
    }
}

/// Points an indexing node at a host copy of its index tensor (src[1], I32 or I64 as the op
/// table checked): the kernel reads the copy, filled from guest memory before each run.
Code make_index_copy(ggml_context* ctx, ggml_tensor* node, BuiltGraph::IndexCheck& check) {
    const ggml_tensor* t = node->src[1];
    const size_t es = ggml_type_size(t->type);
    const auto count = static_cast<size_t>(ggml_nelements(t));
    check.copy_memory.reset(new (std::nothrow) std::byte[count * es + 1]);
    ggml_tensor* c = check.copy_memory ? ggml_new_tensor(ctx, t->type, 4, t->ne) : nullptr;
    if (!c) return Code::no_memory;
    c->buffer = t->buffer;
    c->data = check.copy_memory.get();
    check.copy = c;
    check.source = t;
    node->src[1] = c;
    return Code::ok;
}

/// Reads the guest's indices into the host copy, element by element (the source may be
/// strided).
void fill_index_copy(const BuiltGraph::IndexCheck& check) {
    const ggml_tensor* t = check.source;
    const size_t es = ggml_type_size(t->type);
    auto* out = static_cast<std::byte*>(check.copy->data);
    const auto* base = static_cast<const std::byte*>(t->data);
    for (int64_t i3 = 0; i3 < t->ne[3]; ++i3)
        for (int64_t i2 = 0; i2 < t->ne[2]; ++i2)
            for (int64_t i1 = 0; i1 < t->ne[1]; ++i1)
                for (int64_t i0 = 0; i0 < t->ne[0]; ++i0, out += es)
                    std::memcpy(
                        out, base + i0 * t->nb[0] + i1 * t->nb[1] + i2 * t->nb[2] + i3 * t->nb[3],
                        es);
}

/// Whether every value of a contiguous host copy of indices is in [0, rows).
bool copied_in_range(const ggml_tensor* t, int64_t rows) {
    const auto count = static_cast<size_t>(ggml_nelements(t));
    for (size_t i = 0; i < count; ++i) {
        int64_t v = 0;
        if (t->type == GGML_TYPE_I64) {
            std::memcpy(&v, static_cast<const std::byte*>(t->data) + i * 8, 8);
        } else {
            int32_t v32 = 0;
            std::memcpy(&v32, static_cast<const std::byte*>(t->data) + i * 4, 4);
            v = v32;
        }
        if (v < 0 || v >= rows) return false;
    }
    return true;
}

/// The threads for a part of a built graph: threads_for_work (checks.hpp) of its nodes'
/// multiply-adds and elements, raised to the floor its tuner chose (thread_tuner.hpp),
/// applied to the device when they changed.
void choose_threads(State& s, BuiltGraph& g) {
    if (!s.adapt_threads) return;
    uint64_t work = 0, steps = 0;
    for (int i = 0; i < ggml_graph_n_nodes(g.graph); ++i) {
        const ggml_tensor* n = ggml_graph_node(g.graph, i);
        if (!op_computes(n->op)) continue;
        ++steps;
        const uint64_t w = node_work(*n);
        work = w > UINT64_MAX - work ? UINT64_MAX : work + w;
    }
    const int by_work = threads_for_work(work, steps, s.max_threads);
    g.least_threads = std::min(g.least_threads, by_work);
    const int t = std::min(std::max(by_work, g.tuner.next()), s.max_threads);
    if (t == s.threads_now) return;
    s.set_threads(s.backend, t);
    s.threads_now = t;
}

/// Makes g.graph the built nodes [from, to).
void set_graph_nodes(BuiltGraph& g, size_t from, size_t to) {
    ggml_graph_clear(g.graph);
    for (size_t i = from; i < to; ++i)
        ggml_graph_add_node(g.graph, g.nodes[i]);
}

/// Whether ggml-cpu's work buffer for the graph's nodes, planned at the most threads,
/// stays within max_work_bytes. ggml plans it from the nodes' shapes alone (an empty
/// node, a zero-stride source of 2^40 elements), and when its allocation fails the CPU
/// device keeps the freed buffer and frees it again later: a graph that asks for more
/// is refused before it runs.
bool plan_fits(State& s, BuiltGraph& g) {
    if (!s.graph_plan) return true;
    set_graph_nodes(g, 0, g.nodes.size());
    const ggml_cplan plan = s.graph_plan(g.graph, s.max_threads, nullptr);
    ggml_graph_clear(g.graph);
    return plan.work_size <= max_work_bytes;
}

void compute_nodes(State& s, BuiltGraph& g, size_t from, size_t to, int32_t& status) {
    if (from >= to) return;
    if (!s.backend) throw std::bad_alloc();
    set_graph_nodes(g, from, to);
    choose_threads(s, g);
    try {
        status = ggml_backend_graph_compute(s.backend, g.graph);
    } catch (...) {
        // ggml-cpu replaces its work buffer with delete[] then new[]: when new[] throws,
        // the device still holds the freed buffer, runs the next graph in it and frees it
        // again when it is freed. That device is left as it is, never used nor freed, and
        // the context goes on with a new one.
        s.backend = ggml_backend_dev_init(s.dev, nullptr);
        if (s.backend && s.set_threads) s.set_threads(s.backend, s.threads_now);
        log("a graph's compute failed (out of memory): the device was replaced");
        throw;
    }
}

/// Decodes, checks and builds a packed graph (copied out of the guest's blob first: the
/// guest may write the blob while the host reads it).
Code build_graph(Context& c, std::span<const std::byte> blob, std::unique_ptr<BuiltGraph>& out) {
    State& s = c.state;
    auto built = std::make_unique<BuiltGraph>();
    BuiltGraph& g = *built;
    g.bytes.assign(blob.begin(), blob.end());
    const std::byte* p = g.bytes.data();
    uint64_t left = g.bytes.size();
    uint32_t n_nodes = 0;
    std::memcpy(&n_nodes, p, 4);
    p += 4, left -= 4;
    if (n_nodes == 0 || uint64_t{n_nodes} > (left - 4) / 8) return Code::bad_graph;
    s.nodes.resize(n_nodes);
    std::memcpy(s.nodes.data(), p, uint64_t{n_nodes} * 8);
    p += uint64_t{n_nodes} * 8, left -= uint64_t{n_nodes} * 8;
    uint32_t n_tensors = 0;
    std::memcpy(&n_tensors, p, 4);
    p += 4, left -= 4;
    if (n_tensors == 0 || uint64_t{n_tensors} > left / sizeof(g::RpcTensor)) return Code::bad_graph;
    s.tensors.resize(n_tensors);
    std::memcpy(static_cast<void*>(s.tensors.data()), p, n_tensors * sizeof(g::RpcTensor));

    // Ids: non-zero, unique.
    s.index.clear();
    s.index.reserve(n_tensors);
    for (uint32_t i = 0; i < n_tensors; ++i) {
        const uint64_t id = s.tensors[i].id;
        if (id == 0 || !s.index.emplace(id, i).second) return Code::bad_graph;
    }
    // Nodes: among the tensors, each once.
    s.is_node.assign(n_tensors, 0);
    g.nodes.reserve(n_nodes);
    for (uint64_t id : s.nodes) {
        auto it = s.index.find(id);
        if (it == s.index.end() || s.is_node[it->second]) return Code::bad_graph;
        s.is_node[it->second] = 1;
    }

    // Each tensor: layout, op number, buffer and extent.
    s.made.assign(n_tensors, nullptr);
    const size_t need =
        ggml_tensor_overhead() * (uint64_t{n_tensors} + n_nodes) + // + the index copies
        ggml_graph_overhead_custom(n_nodes, false) + 1024;
    g.arena.reset(new (std::nothrow) std::byte[need]);
    g.arena_size = need;
    g.ctx = g.arena ? ggml_init({need, g.arena.get(), true}) : nullptr;
    if (!g.ctx) return Code::no_memory;
    for (uint32_t i = 0; i < n_tensors; ++i) {
        const g::RpcTensor& t = s.tensors[i];
        Layout l;
        if (check_layout(t, l) != Code::ok || t.op >= GGML_OP_COUNT) return Code::bad_tensor;
        if (t.buffer.is_null()) return Code::bad_tensor;
        Buffer* b = find_buffer(c, t.buffer.value());
        if (!b) return Code::unknown_handle;
        if (!range_inside(t.data, l.nbytes, b->size)) return Code::bad_tensor;
        bool listed = false;
        for (const auto& u : g.buffers)
            listed = listed || u.handle == t.buffer.value();
        if (!listed) g.buffers.push_back({t.buffer.value(), b->buffer, b->base});
        const int64_t ne[4] = {t.ne[0], t.ne[1], t.ne[2], t.ne[3]};
        ggml_tensor* m = ggml_new_tensor(g.ctx, static_cast<ggml_type>(t.type), 4, ne);
        if (!m) return Code::no_memory;
        for (int k = 0; k < 4; ++k)
            m->nb[k] = t.nb[k];
        m->buffer = b->buffer;
        m->data = b->base + t.data;
        m->op = static_cast<ggml_op>(t.op);
        std::memcpy(m->op_params, t.op_params.data(), sizeof m->op_params);
        m->flags = t.flags;
        char name[GGML_MAX_NAME];
        std::memcpy(name, t.name.data(), sizeof name);
        name[sizeof name - 1] = '\0';
        ggml_set_name(m, name);
        m->view_offs = 0;
        s.made[i] = m;
    }
    // References: every src and view_src among the tensors; views inside their source.
    for (uint32_t i = 0; i < n_tensors; ++i) {
        const g::RpcTensor& t = s.tensors[i];
        ggml_tensor* m = s.made[i];
        for (size_t k = 0; k < g::max_src; ++k) {
            if (t.src[k] == 0) continue;
            auto it = s.index.find(t.src[k]);
            if (it == s.index.end()) return Code::bad_graph;
            m->src[k] = s.made[it->second];
        }
        if (t.view_src != 0) {
            auto it = s.index.find(t.view_src);
            if (it == s.index.end()) return Code::bad_graph;
            ggml_tensor* v = s.made[it->second];
            const g::RpcTensor& vt = s.tensors[it->second];
            uint64_t at = 0;
            if (v->buffer != m->buffer || __builtin_add_overflow(vt.data, t.view_offs, &at) ||
                at != t.data || !range_inside(t.view_offs, ggml_nbytes(m), ggml_nbytes(v)))
                return Code::bad_tensor;
            m->view_src = v;
            m->view_offs = t.view_offs;
        }
    }
    // Nodes: the op table, then the device.
    for (uint64_t id : s.nodes) {
        ggml_tensor* n = s.made[s.index[id]];
        Code e = check_op(*n);
        if (e == Code::ok && writes_over_its_input(n)) e = Code::bad_tensor;
        if (e == Code::ok && !ggml_backend_dev_supports_op(s.dev, n)) e = Code::unsupported_op;
        if (e != Code::ok) {
            log_refusal(e, n);
            return e;
        }
        g.nodes.push_back(n);
    }
    g.graph = ggml_new_graph_custom(g.ctx, n_nodes, false);
    if (!g.graph) return Code::no_memory;
    if (!plan_fits(s, g)) {
        log("graph refused: NO_MEMORY: its work buffer would pass 1 GiB");
        return Code::no_memory;
    }
    // Nodes that index rows by tensor data run once the indices are computed: the nodes
    // before them that write the indices' memory run first, then the values are checked.
    size_t from = 0;
    for (size_t i = 0; i < n_nodes; ++i) {
        ggml_tensor* n = g.nodes[i];
        const IndexRule rule = index_rule(*n);
        if (!rule.indices) continue;
        BuiltGraph::IndexCheck check;
        check.node = i;
        check.rows = rule.rows;
        for (size_t k = from; k < i && !check.run_before; ++k)
            check.run_before = overlaps(g.nodes[k], rule.indices);
        if (check.run_before) from = i;
        // Indices in guest memory could change between the check and the kernel's read:
        // the kernel reads a host copy, and the copy is checked.
        if (s.guest_backed.count(rule.indices->buffer)) {
            if (Code e = make_index_copy(g.ctx, n, check); e != Code::ok) return e;
            g.copy_bytes += ggml_nbytes(check.copy);
        }
        g.index_checks.push_back(std::move(check));
    }
    out = std::move(built);
    return Code::ok;
}

/// Whether every buffer a built graph uses is still this context's, in the same memory.
bool buffers_unchanged(Context& c, const BuiltGraph& g) {
    for (const auto& u : g.buffers) {
        const Buffer* b = find_buffer(c, u.handle);
        if (!b || b->buffer != u.buffer || b->base != u.base) return false;
    }
    return true;
}

/// Runs a built graph: its data-dependent checks, then its nodes.
Code run_checks_and_nodes(State& s, BuiltGraph& g, int32_t& status) {
    status = GGML_STATUS_SUCCESS;
    size_t from = 0;
    for (const auto& check : g.index_checks) {
        if (check.run_before) {
            compute_nodes(s, g, from, check.node, status);
            if (status != GGML_STATUS_SUCCESS) return Code::ok;
            from = check.node;
        }
        if (check.copy) {
            fill_index_copy(check);
            if (!copied_in_range(check.copy, check.rows)) return Code::bad_index;
        } else if (!indices_in_range(index_rule(*g.nodes[check.node]))) {
            return Code::bad_index;
        }
    }
    compute_nodes(s, g, from, g.nodes.size(), status);
    return Code::ok;
}

/// Runs a built graph and, when the device's threads are chosen per graph, reports how
/// long it took to the graph's tuner (made after its first run, which found the parts'
/// work-based thread counts).
Code run_graph(State& s, BuiltGraph& g, int32_t& status) {
    if (!s.adapt_threads) return run_checks_and_nodes(s, g, status);
    const auto start = std::chrono::steady_clock::now();
    const int floor = g.tuner.next();
    const Code e = run_checks_and_nodes(s, g, status);
    if (e != Code::ok || status != GGML_STATUS_SUCCESS) return e;
    if (!g.tuner_made) {
        g.tuner.reset(ThreadTuner::floors_for(g.least_threads, s.max_threads));
        g.tuner_made = true;
    } else if (g.tuner.tuning()) {
        ++s.timed_runs;
        if (floor > g.least_threads) ++s.raised_runs;
    }
    const unsigned measured = g.tuner.measurements(), fell_back = g.tuner.fallbacks();
    g.tuner.report(static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                             std::chrono::steady_clock::now() - start)
                                             .count()));
    s.thread_measurements += g.tuner.measurements() - measured;
    s.thread_fallbacks += g.tuner.fallbacks() - fell_back;
    return e;
}

Code graph_compute_impl(Context& c, const g::GraphComputeRequest& r, int32_t& status) {
    State& s = c.state;
    if (r.size < 8 || r.size > max_graph_bytes) return Code::bad_graph;
    std::span<const std::byte> blob = c.resolve(r.res_id, 0, r.size);
    if (blob.empty()) return Code::bad_range;
    ++s.graph_computes;
    if (BuiltGraph* kept = s.graphs.find(blob)) {
        if (buffers_unchanged(c, *kept)) {
            ++s.graph_reuses;
            return run_graph(s, *kept, status);
        }
        s.graphs.drop(kept);
    }
    std::unique_ptr<BuiltGraph> built;
    if (Code e = build_graph(c, blob, built); e != Code::ok) return e;
    const Code e = run_graph(s, s.graphs.keep(std::move(built)), status);
    s.graphs.let_go(); // a graph too large to keep goes now
    return e;
}

Answer<g::StatusReply> graph_compute(Context& c, const g::GraphComputeRequest& r) {
    int32_t status = GGML_STATUS_FAILED;
    if (Code e = graph_compute_impl(c, r, status); e != Code::ok) return Refusal{raw(e)};
    return g::StatusReply{status};
}

// ---------------------------------------------------------------------------
// The two commands carrying ggml's raw tensor

/// ggml's tensor as sent, reduced to what describes it (no pointer survives), checked.
Code sanitized(const Bytes& raw_bytes, ggml_tensor& out) {
    if (raw_bytes.size() < sizeof(ggml_tensor)) return Code::bad_request;
    // The enums are read as numbers and checked before they become enums (a value past
    // ggml_type or ggml_op is not a value of its type).
    const std::byte* p = raw_bytes.data();
    uint32_t type = 0, op = 0;
    std::memcpy(&type, p + offsetof(ggml_tensor, type), sizeof type);
    std::memcpy(&op, p + offsetof(ggml_tensor, op), sizeof op);
    if (type >= GGML_TYPE_COUNT || op >= GGML_OP_COUNT) return Code::bad_tensor;
    out = ggml_tensor{};
    out.type = static_cast<ggml_type>(type);
    out.op = static_cast<ggml_op>(op);
    std::memcpy(out.ne, p + offsetof(ggml_tensor, ne), sizeof out.ne);
    std::memcpy(out.nb, p + offsetof(ggml_tensor, nb), sizeof out.nb);
    std::memcpy(out.op_params, p + offsetof(ggml_tensor, op_params), sizeof out.op_params);
    std::memcpy(&out.flags, p + offsetof(ggml_tensor, flags), sizeof out.flags);
    Layout l;
    return check_layout(out, l) == Code::ok ? Code::ok : Code::bad_tensor;
}

/// Whether the pointer field at offset `at` of a raw ggml tensor is non-null.
bool present(const Bytes& raw_bytes, size_t at) {
    void* v = nullptr;
    std::memcpy(&v, raw_bytes.data() + at, sizeof v);
    return v != nullptr;
}

struct InlineOp {
    ggml_tensor op{};
    ggml_tensor view_src{};
    ggml_tensor src[GGML_MAX_SRC]{};
    Buffer* buffer = nullptr;
};

/// Reads the inline layout (PROTOCOL.md §7): the tensor, the buffer handle if its buffer
/// is non-null, the view_src tensor if non-null, the sources up to the first null.
Code read_inline(Context& c, Decoder& d, InlineOp& out) {
    Bytes raw_op = d.read_bytes(sizeof(ggml_tensor));
    if (!d.ok()) return Code::bad_request;
    if (Code e = sanitized(raw_op, out.op); e != Code::ok) return e;
    if (present(raw_op, offsetof(ggml_tensor, buffer))) {
        const uint64_t h = d.read_u64();
        if (!d.ok()) return Code::bad_request;
        out.buffer = find_buffer(c, h);
        if (!out.buffer) return Code::unknown_handle;
        out.op.buffer = out.buffer->buffer;
    }
    if (present(raw_op, offsetof(ggml_tensor, view_src))) {
        Bytes v = d.read_bytes(sizeof(ggml_tensor));
        if (!d.ok()) return Code::bad_request;
        if (Code e = sanitized(v, out.view_src); e != Code::ok) return e;
        out.op.view_src = &out.view_src;
    }
    for (size_t i = 0;
         i < GGML_MAX_SRC && present(raw_op, offsetof(ggml_tensor, src) + i * sizeof(void*)); ++i) {
        Bytes v = d.read_bytes(sizeof(ggml_tensor));
        if (!d.ok()) return Code::bad_request;
        if (Code e = sanitized(v, out.src[i]); e != Code::ok) return e;
        out.op.src[i] = &out.src[i];
    }
    return Code::ok;
}

uint32_t supports_op(Context& c, BackendFrame& f) noexcept {
    try {
        auto in = std::make_unique<InlineOp>();
        const Code e = read_inline(c, f.request(), *in);
        if (e == Code::bad_request || e == Code::unknown_handle) return raw(e);
        // A tensor that fails a check is not supported; neither is an op outside the table.
        const bool yes = e == Code::ok && check_op(in->op) == Code::ok &&
                         ggml_backend_dev_supports_op(c.state.dev, &in->op);
        f.reply().put(g::BoolReply{static_cast<uint8_t>(yes)});
        return 0;
    } catch (...) {
        return raw(Code::no_memory);
    }
}

uint32_t get_alloc_size(Context& c, BackendFrame& f) noexcept {
    try {
        Decoder& d = f.request();
        BufferTypeHandle h;
        if (!d.get_into(h)) return raw(Code::bad_request);
        if (!known_buft(c, h)) return raw(Code::unknown_handle);
        auto in = std::make_unique<InlineOp>();
        if (Code e = read_inline(c, d, *in); e != Code::ok) return raw(e);
        const size_t n = ggml_backend_buft_get_alloc_size(c.state.buft, &in->op);
        f.reply().put(g::U64Reply{n});
        return 0;
    } catch (...) {
        return raw(Code::no_memory);
    }
}

uint32_t buft_is_host(Context&, BackendFrame& f) noexcept {
    f.reply().put(g::BoolReply{0}); // deprecated in ggml's protocol: always false
    return 0;
}

constexpr auto g_table = [] {
    DispatchTable<Context, g::command_count> t({.reply_overflow = raw(Code::reply_overflow),
                                                .no_context = raw(Code::not_initialized),
                                                .bad_request = raw(Code::bad_request),
                                                .failed = raw(Code::no_memory)});
    using C = g::Command;
    t.on<g::DeviceGetDeviceCount, &device_count>()
        .on<g::DeviceGetCount, &device_count>()
        .on<g::DeviceGetName, &device_name>()
        .on<g::DeviceGetDescription, &device_description>()
        .on<g::DeviceGetType, &device_type>()
        .on<g::DeviceGetMemory, &device_memory>()
        .on(static_cast<uint32_t>(C::device_supports_op), &supports_op)
        .on<g::DeviceGetBufferType, &device_buffer_type>()
        .on<g::DeviceGetProps, &device_props>()
        .on<g::DeviceBufferFromPtr, &buffer_from_ptr>()
        .on<g::BufferTypeGetName, &buft_name>()
        .on<g::BufferTypeGetAlignment, &buft_alignment>()
        .on<g::BufferTypeGetMaxSize, &buft_max_size>()
        .on(static_cast<uint32_t>(C::buffer_type_is_host), &buft_is_host)
        .on<g::BufferTypeAllocBuffer, &buft_alloc>()
        .on(static_cast<uint32_t>(C::buffer_type_get_alloc_size), &get_alloc_size)
        .on<g::BufferGetBase, &buffer_base>()
        .on<g::BufferSetTensor, &set_tensor>()
        .on<g::BufferGetTensor, &get_tensor>()
        .on<g::BufferCpyTensor, &cpy_tensor>()
        .on<g::BufferClear, &buffer_clear>()
        .on<g::BufferFreeBuffer, &buffer_free>()
        .on<g::BackendGraphCompute, &graph_compute>()
        .on<g::GetCapabilities, &capabilities>();
    return t;
}();

} // namespace
} // namespace apir::ggml_host

APIR_BACKEND_CONTEXT_ENTRY_POINTS(apir::ggml_host::g_contexts)
APIR_BACKEND_DISPATCHER(apir::ggml_host::g_contexts, apir::ggml_host::g_table)
