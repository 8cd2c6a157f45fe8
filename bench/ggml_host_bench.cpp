// apir-ggml-host-bench: graph-compute latency of ggml's host backend
// (libggml-virtgpu-backend.so.0) and libggml-apir-host on the same work, in one run: each
// is loaded as a host loads it, given ggml's CPU device (1 thread), and asked through its
// dispatcher to compute the same graph N times. The graph is a chain of ADDs over small
// f32 vectors, so the figure is dominated by what a backend does per graph (decoding,
// checks, ggml context) rather than by arithmetic.
//
//   apir-ggml-host-bench [iterations] [chain length] [threads of ours, default 4 as ggml's]
//   (APIR_GGML_PEER_DIR: ggml's build)
#include <apir/backend_abi.h>
#include <apir/ggml/commands.hpp>
#include <apir/ggml/graph.hpp>

#include <ggml.h>

#include <dlfcn.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

namespace g = apir::ggml;

std::string g_cpu_lib;
std::vector<std::byte> g_blob(size_t{1} << 22);
std::vector<float> g_data(64);
std::string g_threads = "4"; // ggml's host backend runs ggml's default, 4 threads

const char* get_config(uint32_t, const char* key) {
    if (std::strcmp(key, "ggml.library.path") == 0) return g_cpu_lib.c_str();
    if (std::strcmp(key, "ggml.library.reg") == 0) return "ggml_backend_cpu_reg";
    if (std::strcmp(key, "ggml.cpu.threads") == 0) return g_threads.c_str();
    return nullptr;
}
void* get_shmem(uint32_t, uint32_t res) {
    return res == 3   ? static_cast<void*>(g_blob.data())
           : res == 4 ? static_cast<void*>(g_data.data())
                      : nullptr;
}
virgl_apir_callbacks g_callbacks{&get_config, &get_shmem};

struct Backend {
    const char* name;
    apir_backend_dispatcher_fn dispatch = nullptr;

    template <class C>
    bool call(const typename C::request& req, typename C::response& out) {
        std::vector<std::byte> in(1 << 12);
        apir::Encoder e(in);
        e.put(req);
        std::vector<char> reply(1 << 12);
        char* end = nullptr;
        char* dec = reinterpret_cast<char*>(in.data());
        const uint32_t code = dispatch(1, &g_callbacks, C::flags, dec, dec + e.size(), reply.data(),
                                       reply.data() + reply.size(), &end);
        if (code != 0) {
            std::fprintf(stderr, "%s: command %u answered %u\n", name, C::flags, code);
            return false;
        }
        apir::Decoder d(std::span<const std::byte>(reinterpret_cast<std::byte*>(reply.data()),
                                                   static_cast<size_t>(end - reply.data())));
        return d.get_into(out);
    }
};

bool load(const char* path, Backend& b) {
    void* h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        std::fprintf(stderr, "%s\n", dlerror());
        return false;
    }
    auto init = reinterpret_cast<apir_backend_initialize_fn>(dlsym(h, "apir_backend_initialize"));
    b.dispatch = reinterpret_cast<apir_backend_dispatcher_fn>(dlsym(h, "apir_backend_dispatcher"));
    return init && b.dispatch && init(1, &g_callbacks) == APIR_BACKEND_INIT_OK;
}

// Median and 90th percentile of n graph computes, in microseconds.
bool run(Backend& b, int iterations, uint32_t chain) {
    g::BufferTypeReply buft;
    g::BufferReply buf;
    if (!b.call<g::DeviceGetBufferType>(apir::Empty{}, buft) ||
        !b.call<g::BufferTypeAllocBuffer>({buft.buffer_type, uint64_t{chain + 2} * 256}, buf) ||
        buf.buffer.is_null())
        return false;
    g::Graph graph;
    uint64_t prev = graph.add(g::make_tensor(g::Type::f32, {64}).place(buf.buffer, 0));
    const uint64_t one = graph.add(g::make_tensor(g::Type::f32, {64}).place(buf.buffer, 256));
    for (uint32_t i = 0; i < chain; ++i)
        prev = graph.add_node(
            g::make_tensor(g::Type::f32, {64}).place(buf.buffer, uint64_t{i + 2} * 256),
            static_cast<g::Op>(GGML_OP_ADD), {prev, one});
    auto n = graph.encode(g_blob);
    if (!n) return false;
    // Inputs 0 and 1: after one compute the last node holds `chain` (checked below).
    const g::RpcTensor& t0 = graph.tensors()[0];
    const g::RpcTensor& t1 = graph.tensors()[1];
    apir::Empty none;
    std::fill(g_data.begin(), g_data.end(), 0.0f);
    if (!b.call<g::BufferSetTensor>({buf.buffer, t0, 4, 0, 256}, none)) return false;
    std::fill(g_data.begin(), g_data.end(), 1.0f);
    if (!b.call<g::BufferSetTensor>({buf.buffer, t1, 4, 0, 256}, none)) return false;
    std::vector<double> us;
    for (int i = 0; i < iterations; ++i) {
        g::StatusReply st;
        const auto t0 = std::chrono::steady_clock::now();
        if (!b.call<g::BackendGraphCompute>({3, *n}, st) || st.status != 0) return false;
        us.push_back(
            std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0)
                .count());
    }
    std::fill(g_data.begin(), g_data.end(), -1.0f);
    if (!b.call<g::BufferGetTensor>({buf.buffer, graph.tensors().back(), 4, 0, 256}, none))
        return false;
    if (g_data[0] != static_cast<float>(chain) || g_data[63] != static_cast<float>(chain)) {
        std::fprintf(stderr, "%s: wrong result %f\n", b.name, static_cast<double>(g_data[0]));
        return false;
    }
    std::sort(us.begin(), us.end());
    std::printf("%-34s graph of %u ADD nodes: median %8.1f us, p90 %8.1f us (%d computes)\n",
                b.name, chain, us[us.size() / 2], us[us.size() * 9 / 10], iterations);
    return true;
}

} // namespace

// A whole number in [1, max], or 0 when the text is not one.
static long count_arg(const char* text, long max) {
    char* end = nullptr;
    const long v = std::strtol(text, &end, 10);
    return end != text && *end == '\0' && v >= 1 && v <= max ? v : 0;
}

int main(int argc, char** argv) {
    const long iterations = argc > 1 ? count_arg(argv[1], 1000000) : 2000;
    const long chain = argc > 2 ? count_arg(argv[2], 4096) : 64;
    const long threads = argc > 3 ? count_arg(argv[3], 1024) : 4;
    if (argc > 4 || iterations == 0 || chain == 0 || threads == 0) {
        std::fprintf(stderr,
                     "usage: apir-ggml-host-bench [computes (2000)] [ADD nodes (64)] "
                     "[device threads (4)]\n"
                     "Graph-compute latency of libggml-apir-host and ggml's host backend over "
                     "ggml's CPU device, in one run (APIR_GGML_PEER_DIR: the ggml peer).\n");
        return 2;
    }
    g_threads = std::to_string(threads);
    const char* peer = std::getenv("APIR_GGML_PEER_DIR");
    if (!peer || !*peer) {
        std::printf("skip: APIR_GGML_PEER_DIR is not set\n");
        return 77;
    }
    g_cpu_lib = std::string(peer) + "/lib/libggml-cpu.so.0";
    const std::string ggml_host = std::string(peer) + "/lib/libggml-virtgpu-backend.so.0";
    Backend ours{"libggml-apir-host"}, theirs{"ggml's libggml-virtgpu-backend"};
    const auto n = static_cast<int>(iterations);
    const auto nodes = static_cast<uint32_t>(chain);
    if (!load(APIR_GGML_HOST_BACKEND, ours) || !run(ours, n, nodes)) return 1;
    if (!load(ggml_host.c_str(), theirs) || !run(theirs, n, nodes)) return 1;
    return 0;
}
