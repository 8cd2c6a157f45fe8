// ggml's unmodified libraries computing ops on ggml's VirtGPU device through the virtual
// render node: the same graphs on "[virtgpu] CPU" (ggml's frontend -> the node ->
// apir's host -> ggml's host backend -> ggml's CPU backend) and on the local CPU
// backend, results compared. Run with libapir-vdrm.so preloaded.
//
//     ggml-vdrm-ops apir|venus     (the capset mode: GGML_REMOTING_USE_APIR_CAPSET set or not)
//
// ggml is loaded from $APIR_GGML_PEER_DIR at run time (skip, 77, without it); its headers
// give the declarations. The buffers of the VirtGPU device are not freed: freeing one
// crashes ggml's host backend (docs/VDRM.md); they go with the process.
#include <apir/vdrm/vdrm.h>

#include <ggml-alloc.h>
#include <ggml-backend.h>
#include <ggml.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include <dlfcn.h>

namespace {

struct Ggml {
#define APIR_GGML_FNS(X)                                                                           \
    X(ggml_init)                                                                                   \
    X(ggml_free)                                                                                   \
    X(ggml_new_tensor_1d)                                                                          \
    X(ggml_new_tensor_2d)                                                                          \
    X(ggml_new_tensor_3d)                                                                          \
    X(ggml_add)                                                                                    \
    X(ggml_mul)                                                                                    \
    X(ggml_mul_mat)                                                                                \
    X(ggml_soft_max)                                                                               \
    X(ggml_rope)                                                                                   \
    X(ggml_get_rows)                                                                               \
    X(ggml_cpy)                                                                                    \
    X(ggml_new_graph)                                                                              \
    X(ggml_build_forward_expand)                                                                   \
    X(ggml_nbytes)                                                                                 \
    X(ggml_tensor_overhead)                                                                        \
    X(ggml_graph_overhead)                                                                         \
    X(ggml_backend_alloc_ctx_tensors)                                                              \
    X(ggml_backend_buffer_free)                                                                    \
    X(ggml_backend_tensor_set)                                                                     \
    X(ggml_backend_tensor_get)                                                                     \
    X(ggml_backend_graph_compute)                                                                  \
    X(ggml_backend_dev_by_name)                                                                    \
    X(ggml_backend_dev_init)                                                                       \
    X(ggml_backend_free)
#define APIR_GGML_FIELD(f) decltype(&::f) f = nullptr;
    APIR_GGML_FNS(APIR_GGML_FIELD)

    bool load(void* h) {
        bool ok = true;
#define APIR_GGML_LOAD(f)                                                                          \
    f = reinterpret_cast<decltype(&::f)>(dlsym(h, #f));                                            \
    if (!f) std::printf("missing %s\n", #f), ok = false;
        APIR_GGML_FNS(APIR_GGML_LOAD)
        return ok;
    }
};

Ggml g;

// One op: builds its graph in a fresh context (inputs from make, output = last node),
// runs it on a backend, returns the output's bytes.
using Build = std::function<ggml_tensor*(ggml_context*, std::vector<ggml_tensor*>& inputs)>;

float input_value(size_t tensor, size_t i) {
    return std::sin(0.37f * float(i) + 1.3f * float(tensor)) * 2.0f;
}

std::vector<char> run(ggml_backend_t backend, const Build& build, bool free_buffer) {
    ggml_init_params p{};
    p.mem_size = 64 * g.ggml_tensor_overhead() + g.ggml_graph_overhead();
    p.no_alloc = true;
    ggml_context* ctx = g.ggml_init(p);
    std::vector<ggml_tensor*> inputs;
    ggml_tensor* out = build(ctx, inputs);
    ggml_cgraph* graph = g.ggml_new_graph(ctx);
    g.ggml_build_forward_expand(graph, out);
    ggml_backend_buffer_t buf = g.ggml_backend_alloc_ctx_tensors(ctx, backend);
    if (!buf) return {};
    for (size_t t = 0; t < inputs.size(); ++t) {
        ggml_tensor* in = inputs[t];
        std::vector<char> bytes(g.ggml_nbytes(in));
        if (in->type == GGML_TYPE_F32) {
            auto* f = reinterpret_cast<float*>(bytes.data());
            for (size_t i = 0; i < bytes.size() / 4; ++i)
                f[i] = input_value(t, i);
        } else if (in->type == GGML_TYPE_I32) { // row indices or positions
            auto* v = reinterpret_cast<int32_t*>(bytes.data());
            for (size_t i = 0; i < bytes.size() / 4; ++i)
                v[i] = int32_t((i * 7 + 3) % 16);
        }
        g.ggml_backend_tensor_set(in, bytes.data(), 0, bytes.size());
    }
    std::vector<char> result;
    if (g.ggml_backend_graph_compute(backend, graph) == GGML_STATUS_SUCCESS) {
        result.resize(g.ggml_nbytes(out));
        g.ggml_backend_tensor_get(out, result.data(), 0, result.size());
    }
    if (free_buffer) g.ggml_backend_buffer_free(buf);
    g.ggml_free(ctx);
    return result;
}

ggml_tensor* input(std::vector<ggml_tensor*>& ins, ggml_tensor* t) {
    ins.push_back(t);
    return t;
}

} // namespace

int main(int argc, char** argv) {
    const std::string mode = argc > 1 ? argv[1] : "apir";
    const char* peer = std::getenv("APIR_GGML_PEER_DIR");
    if (!peer || !*peer) {
        std::puts("skip: APIR_GGML_PEER_DIR is not set");
        return 77;
    }
    auto set_host = reinterpret_cast<int (*)(const apir_vdrm_host_setup*)>(
        dlsym(RTLD_DEFAULT, "apir_vdrm_set_host"));
    if (!set_host) {
        std::puts("FAIL: libapir-vdrm.so is not preloaded");
        return 1;
    }
    const std::string lib = std::string(peer) + "/lib/";
    void* h = dlopen((lib + "libggml.so.0").c_str(), RTLD_NOW | RTLD_GLOBAL);
    if (!h) {
        std::printf("skip: %s\n", dlerror());
        return 77;
    }
    if (!g.load(h)) return 1;
    // ggml's frontend reads the variable when its device is first asked for.
    if (mode == "apir")
        setenv("GGML_REMOTING_USE_APIR_CAPSET", "1", 1);
    else
        unsetenv("GGML_REMOTING_USE_APIR_CAPSET");
    const std::string config = "apir.load_library.path=" + lib + "libggml-virtgpu-backend.so.0\n" +
                               "ggml.library.path=" + lib + "libggml-cpu.so.0\n" +
                               "ggml.library.reg=ggml_backend_cpu_reg\n";
    apir_vdrm_host_setup hs{};
    hs.config = config.c_str();
    if (set_host(&hs) != 0) {
        std::puts("FAIL: apir_vdrm_set_host");
        return 1;
    }

    ggml_backend_dev_t remote_dev = g.ggml_backend_dev_by_name("[virtgpu] CPU");
    ggml_backend_dev_t cpu_dev = g.ggml_backend_dev_by_name("CPU");
    if (!remote_dev || !cpu_dev) {
        std::puts("FAIL: no \"[virtgpu] CPU\" device (or no CPU device)");
        return 1;
    }
    ggml_backend_t remote = g.ggml_backend_dev_init(remote_dev, nullptr);
    ggml_backend_t cpu = g.ggml_backend_dev_init(cpu_dev, nullptr);
    if (!remote || !cpu) {
        std::puts("FAIL: cannot start the backends");
        return 1;
    }

    struct Op {
        const char* name;
        Build build;
        ggml_type out;
    };
    const Op ops[] = {
        {"ADD",
         [](ggml_context* c, auto& in) {
             return g.ggml_add(c, input(in, g.ggml_new_tensor_2d(c, GGML_TYPE_F32, 128, 4)),
                               input(in, g.ggml_new_tensor_2d(c, GGML_TYPE_F32, 128, 4)));
         },
         GGML_TYPE_F32},
        {"MUL",
         [](ggml_context* c, auto& in) {
             return g.ggml_mul(c, input(in, g.ggml_new_tensor_2d(c, GGML_TYPE_F32, 128, 4)),
                               input(in, g.ggml_new_tensor_2d(c, GGML_TYPE_F32, 128, 1)));
         },
         GGML_TYPE_F32},
        {"MUL_MAT",
         [](ggml_context* c, auto& in) {
             return g.ggml_mul_mat(c, input(in, g.ggml_new_tensor_2d(c, GGML_TYPE_F32, 64, 32)),
                                   input(in, g.ggml_new_tensor_2d(c, GGML_TYPE_F32, 64, 16)));
         },
         GGML_TYPE_F32},
        {"SOFT_MAX",
         [](ggml_context* c, auto& in) {
             return g.ggml_soft_max(c, input(in, g.ggml_new_tensor_2d(c, GGML_TYPE_F32, 64, 8)));
         },
         GGML_TYPE_F32},
        {"ROPE",
         [](ggml_context* c, auto& in) {
             return g.ggml_rope(c, input(in, g.ggml_new_tensor_3d(c, GGML_TYPE_F32, 64, 4, 8)),
                                input(in, g.ggml_new_tensor_1d(c, GGML_TYPE_I32, 8)), 64, 0);
         },
         GGML_TYPE_F32},
        {"GET_ROWS",
         [](ggml_context* c, auto& in) {
             return g.ggml_get_rows(c, input(in, g.ggml_new_tensor_2d(c, GGML_TYPE_F32, 32, 16)),
                                    input(in, g.ggml_new_tensor_1d(c, GGML_TYPE_I32, 5)));
         },
         GGML_TYPE_F32},
        {"CPY",
         [](ggml_context* c, auto& in) {
             return g.ggml_cpy(c, input(in, g.ggml_new_tensor_1d(c, GGML_TYPE_F32, 256)),
                               g.ggml_new_tensor_1d(c, GGML_TYPE_F16, 256));
         },
         GGML_TYPE_F16},
    };
    auto counts = reinterpret_cast<int (*)(struct apir_vdrm_counts*)>(
        dlsym(RTLD_DEFAULT, "apir_vdrm_counts"));
    auto executed = [&] {
        struct apir_vdrm_counts c {};
        return counts && counts(&c) == 0 ? c.executed_commands : 0;
    };
    int failures = 0;
    for (const auto& op : ops) {
        const auto want = run(cpu, op.build, true);
        const uint64_t before = executed();
        const auto got = run(remote, op.build, false);
        // The remote run went through the node: its host executed the commands.
        const uint64_t commands = executed() - before;
        bool same = !want.empty() && got.size() == want.size() && commands > 0;
        double worst = 0;
        if (same && op.out == GGML_TYPE_F32) {
            const auto* a = reinterpret_cast<const float*>(got.data());
            const auto* b = reinterpret_cast<const float*>(want.data());
            for (size_t i = 0; i < want.size() / 4; ++i) {
                const double d =
                    std::fabs(double(a[i]) - double(b[i])) / std::max(1.0, std::fabs(double(b[i])));
                worst = std::max(worst, d);
                same = same && std::isfinite(a[i]) && d <= 1e-5;
            }
        } else if (same) {
            same = std::memcmp(got.data(), want.data(), want.size()) == 0;
        }
        std::printf("%-9s (%s): %s, %zu bytes, largest relative difference %.2g, %llu commands\n",
                    op.name, mode.c_str(), same ? "same as the CPU backend" : "DIFFERENT",
                    got.size(), worst, static_cast<unsigned long long>(commands));
        failures += same ? 0 : 1;
    }
    g.ggml_backend_free(cpu);
    // The VirtGPU backend and its buffers go with the process (see above).
    std::printf("%s\n", failures ? "FAIL" : "OK");
    std::fflush(stdout);
    return failures ? 1 : 0;
}
