// libggml-apir through ggml's own API, against ggml's real host backend over loopback
// (ggml's libggml-virtgpu-backend over ggml's CPU backend, in this process). Exits 77
// when APIR_GGML_PEER_DIR does not hold the peer.
#define CATCH_CONFIG_RUNNER
#include "catch.hpp"

#include "registry.hpp"

#include "apir/loopback.hpp"

#include "ggml-alloc.h"
#include "ggml-backend-impl.h" // ggml_backend_buffer_copy_tensor
#include "ggml-backend.h"
#include "ggml.h"

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

using namespace apir;
using namespace apir::ggml_remote;

namespace {

std::string peer_dir() {
    const char* p = std::getenv("APIR_GGML_PEER_DIR");
    return p ? p : "";
}

BackendConfig loopback_config() {
    const std::string p = peer_dir();
    BackendConfig c;
    c.transport = TransportKind::loopback;
    c.backend_library = p + "/lib/libggml-virtgpu-backend.so.0";
    c.host_config["apir.load_library.path"] = c.backend_library;
    c.host_config["ggml.library.path"] = p + "/lib/libggml-cpu.so.0";
    c.host_config["ggml.library.reg"] = "ggml_backend_cpu_reg";
    c.call_timeout = std::chrono::milliseconds(5000);
    return c;
}

// What apir logged through ggml's logger, for the tests that check it.
std::mutex log_mu;
std::string ggml_log_text;
void capture_log(ggml_log_level, const char* text, void*) {
    std::lock_guard lk(log_mu);
    ggml_log_text += text;
}

/// A registry over a threaded loopback this test can reach (to stop its host).
struct Fixture {
    LoopbackTransport* loopback = nullptr;
    std::unique_ptr<Registry> registry;
    ggml_backend_dev_t dev = nullptr;

    explicit Fixture(BackendConfig c = loopback_config()) {
        LoopbackOptions lo;
        lo.host.config = c.host_config;
        auto t = std::make_unique<LoopbackTransport>(std::move(lo));
        loopback = t.get();
        auto remote =
            std::make_unique<Remote>(AnyTransport(std::move(t)), c, ggml_logger(LogLevel::warn));
        auto r = Registry::create(std::move(remote));
        if (!r) FAIL("Registry::create: " << r.error().message());
        registry = std::move(*r);
        REQUIRE(ggml_backend_reg_dev_count(registry->reg()) == 1);
        dev = ggml_backend_reg_dev_get(registry->reg(), 0);
    }
    uint64_t forwards(uint32_t id) const {
        for (const auto& s : registry->remote()->session().stats())
            if (s.type == CommandType::forward && s.id == id) return s.calls;
        return 0;
    }
};

struct Ctx {
    ggml_context* ctx;
    explicit Ctx(size_t n_tensors = 16) {
        ggml_init_params p{ggml_tensor_overhead() * n_tensors + ggml_graph_overhead(), nullptr,
                           true};
        ctx = ggml_init(p);
    }
    ~Ctx() { ggml_free(ctx); }
};

std::vector<float> random_floats(size_t n, uint32_t seed) {
    std::mt19937 g(seed);
    std::uniform_real_distribution<float> d(-1.f, 1.f);
    std::vector<float> v(n);
    for (auto& x : v)
        x = d(g);
    return v;
}

/// c = a * b (matrix product, ggml's convention) + bias on the device, checked against a
/// product computed here. Returns what went wrong, empty when nothing did (no Catch2
/// macros: the threads of the last test call it too).
std::string matmul_add_round(ggml_backend_t backend, uint32_t seed) {
    constexpr int K = 32, M = 8, N = 4;
    Ctx c;
    ggml_tensor* a = ggml_new_tensor_2d(c.ctx, GGML_TYPE_F32, K, M);
    ggml_tensor* b = ggml_new_tensor_2d(c.ctx, GGML_TYPE_F32, K, N);
    ggml_tensor* bias = ggml_new_tensor_2d(c.ctx, GGML_TYPE_F32, M, N);
    ggml_tensor* out = ggml_add(c.ctx, ggml_mul_mat(c.ctx, a, b), bias);
    ggml_backend_buffer_t buf = ggml_backend_alloc_ctx_tensors(c.ctx, backend);
    if (!buf) return "allocation failed";
    auto va = random_floats(K * M, seed), vb = random_floats(K * N, seed + 1),
         vbias = random_floats(M * N, seed + 2);
    ggml_backend_tensor_set(a, va.data(), 0, ggml_nbytes(a));
    ggml_backend_tensor_set(b, vb.data(), 0, ggml_nbytes(b));
    ggml_backend_tensor_set(bias, vbias.data(), 0, ggml_nbytes(bias));
    ggml_cgraph* g = ggml_new_graph(c.ctx);
    ggml_build_forward_expand(g, out);
    const ggml_status st = ggml_backend_graph_compute(backend, g);
    std::vector<float> got(M * N);
    ggml_backend_tensor_get(out, got.data(), 0, ggml_nbytes(out));
    for (int n = 0; n < N; ++n)
        for (int m = 0; m < M; ++m) {
            float want = vbias[n * M + m];
            for (int k = 0; k < K; ++k)
                want += va[m * K + k] * vb[n * K + k];
            if (std::fabs(got[n * M + m] - want) >= 1e-4f) {
                ggml_backend_buffer_free(buf);
                return "wrong result at " + std::to_string(n * M + m);
            }
        }
    ggml_backend_buffer_free(buf);
    return st == GGML_STATUS_SUCCESS ? "" : "graph_compute failed";
}

} // namespace

TEST_CASE("the device describes the host's device and offers its buffer type") {
    Fixture f;
    CHECK(std::string(ggml_backend_dev_name(f.dev)).rfind("APIR", 0) == 0);
    CHECK(std::string(ggml_backend_dev_description(f.dev)).find("over APIR") != std::string::npos);
    // The host's CPU is, to ggml in this process, a device with its own memory.
    CHECK(ggml_backend_dev_type(f.dev) == GGML_BACKEND_DEVICE_TYPE_GPU);
    size_t free = 0, total = 0;
    ggml_backend_dev_memory(f.dev, &free, &total);
    CHECK(total > 0);
    ggml_backend_buffer_type_t buft = ggml_backend_dev_buffer_type(f.dev);
    CHECK(ggml_backend_dev_supports_buft(f.dev, buft));
    CHECK(ggml_backend_buft_get_alignment(buft) >= 16);
    CHECK_FALSE(ggml_backend_buft_is_host(buft));
    CHECK(std::string(ggml_backend_buft_name(buft)).find(':') != std::string::npos);
}

TEST_CASE("tensors round-trip and a graph computes on the host") {
    Fixture f;
    ggml_backend_t backend = ggml_backend_dev_init(f.dev, nullptr);
    REQUIRE(backend != nullptr);
    REQUIRE(matmul_add_round(backend, 1).empty());

    SECTION("set, memset, clear and copy inside the device") {
        Ctx c;
        ggml_tensor* x = ggml_new_tensor_1d(c.ctx, GGML_TYPE_F32, 1024);
        ggml_tensor* y = ggml_new_tensor_1d(c.ctx, GGML_TYPE_F32, 1024);
        ggml_backend_buffer_t buf = ggml_backend_alloc_ctx_tensors(c.ctx, backend);
        REQUIRE(buf != nullptr);
        auto v = random_floats(1024, 7);
        ggml_backend_tensor_set(x, v.data(), 0, ggml_nbytes(x));
        // Part of a tensor, at an offset.
        std::vector<float> part(100, 2.5f);
        ggml_backend_tensor_set(x, part.data(), 40 * sizeof(float), part.size() * sizeof(float));
        for (int i = 0; i < 100; ++i)
            v[40 + i] = 2.5f;
        const uint64_t cpy_before = f.forwards(19);
        ggml_backend_tensor_copy(x, y); // both on the device: the host copies
        CHECK(f.forwards(19) == cpy_before + 1);
        std::vector<float> got(1024);
        ggml_backend_tensor_get(y, got.data(), 0, ggml_nbytes(y));
        CHECK(got == v);

        ggml_backend_tensor_memset(y, 0, 8, 16); // floats 2..5 become 0
        ggml_backend_tensor_get(y, got.data(), 0, ggml_nbytes(y));
        for (int i = 0; i < 1024; ++i)
            CHECK(got[i] == ((i >= 2 && i < 6) ? 0.f : v[i]));

        ggml_backend_buffer_clear(buf, 0);
        ggml_backend_tensor_get(x, got.data(), 0, ggml_nbytes(x));
        CHECK(got == std::vector<float>(1024, 0.f));
        ggml_backend_buffer_free(buf);
    }
    SECTION("a transfer larger than a staging chunk goes in pieces") {
        Ctx c;
        const auto chunk = static_cast<int64_t>(f.registry->remote()->chunk_size());
        const int64_t n = chunk / static_cast<int64_t>(sizeof(float)) + 12345;
        ggml_tensor* x = ggml_new_tensor_1d(c.ctx, GGML_TYPE_F32, n);
        ggml_backend_buffer_t buf = ggml_backend_alloc_ctx_tensors(c.ctx, backend);
        REQUIRE(buf != nullptr);
        auto v = random_floats(static_cast<size_t>(n), 3);
        const uint64_t sets = f.forwards(17);
        ggml_backend_tensor_set(x, v.data(), 0, ggml_nbytes(x));
        CHECK(f.forwards(17) == sets + 2);
        std::vector<float> got(static_cast<size_t>(n));
        ggml_backend_tensor_get(x, got.data(), 0, ggml_nbytes(x));
        CHECK(got == v);
        ggml_backend_buffer_free(buf);
    }
    ggml_backend_free(backend);
}

TEST_CASE("supports_op asks the host, which refuses what its device cannot run") {
    Fixture f;
    Ctx c;
    ggml_tensor* a = ggml_new_tensor_2d(c.ctx, GGML_TYPE_F32, 256, 4);
    ggml_tensor* q = ggml_new_tensor_2d(c.ctx, GGML_TYPE_IQ2_XXS, 256, 4);
    ggml_tensor* add = ggml_add(c.ctx, a, a);
    ggml_tensor* to_iq = ggml_cpy(c.ctx, a, q); // ggml's CPU has no IQ2_XXS from float
    const uint64_t before = f.forwards(6);
    CHECK(ggml_backend_dev_supports_op(f.dev, add));
    CHECK_FALSE(ggml_backend_dev_supports_op(f.dev, to_iq));
    CHECK(f.forwards(6) == before + 2);
    // Ops that compute nothing are answered here.
    CHECK(ggml_backend_dev_supports_op(f.dev, ggml_view_1d(c.ctx, a, 16, 0)));
    CHECK(f.forwards(6) == before + 2);
}

TEST_CASE("a graph with a tensor outside the device fails, and the device carries on") {
    Fixture f;
    ggml_backend_t backend = ggml_backend_dev_init(f.dev, nullptr);
    ggml_backend_t cpu = ggml_backend_init_by_type(GGML_BACKEND_DEVICE_TYPE_CPU, nullptr);
    REQUIRE(cpu != nullptr);
    Ctx on_dev, on_cpu;
    ggml_tensor* x = ggml_new_tensor_1d(on_dev.ctx, GGML_TYPE_F32, 64);
    ggml_tensor* y = ggml_new_tensor_1d(on_cpu.ctx, GGML_TYPE_F32, 64);
    ggml_backend_buffer_t bx = ggml_backend_alloc_ctx_tensors(on_dev.ctx, backend);
    ggml_backend_buffer_t by = ggml_backend_alloc_ctx_tensors(on_cpu.ctx, cpu);
    ggml_tensor* sum = ggml_add(on_dev.ctx, x, y);
    ggml_backend_buffer_t bs = ggml_backend_alloc_buffer(backend, 4096);
    ggml_tallocr ta = ggml_tallocr_new(bs);
    REQUIRE(ggml_tallocr_alloc(&ta, sum) == GGML_STATUS_SUCCESS);
    ggml_cgraph* g = ggml_new_graph(on_dev.ctx);
    ggml_build_forward_expand(g, sum);
    const uint64_t computes = f.forwards(22);
    CHECK(ggml_backend_graph_compute(backend, g) == GGML_STATUS_FAILED);
    CHECK(f.forwards(22) == computes); // refused here, never sent
    // A CPU tensor is not a source a device copy can use either: ggml falls back.
    CHECK_FALSE(ggml_backend_buffer_copy_tensor(y, x));
    CHECK(matmul_add_round(backend, 5).empty());
    for (auto* b : {bx, by, bs})
        ggml_backend_buffer_free(b);
    ggml_backend_free(cpu);
    ggml_backend_free(backend);
}

TEST_CASE("errors reach ggml as null buffers and failed statuses, with the reason logged") {
    ggml_log_callback old_cb = nullptr;
    void* old_ud = nullptr;
    ggml_log_get(&old_cb, &old_ud);
    ggml_log_set(capture_log, nullptr);
    {
        std::lock_guard lk(log_mu);
        ggml_log_text.clear();
    }
    Fixture f;
    ggml_backend_buffer_type_t buft = ggml_backend_dev_buffer_type(f.dev);

    SECTION("the host cannot allocate: null") {
        CHECK(ggml_backend_buft_alloc_buffer(buft, size_t{1} << 52) == nullptr);
        std::lock_guard lk(log_mu);
        CHECK(ggml_log_text.find("apir: alloc_buffer of") != std::string::npos);
        CHECK_FALSE(f.registry->remote()->lost()); // the host is fine
    }
    SECTION("the host is gone: every later call fails at once") {
        ggml_backend_t backend = ggml_backend_dev_init(f.dev, nullptr);
        Ctx c;
        ggml_tensor* x = ggml_new_tensor_1d(c.ctx, GGML_TYPE_F32, 64);
        ggml_tensor* y = ggml_add(c.ctx, x, x);
        ggml_backend_buffer_t buf = ggml_backend_alloc_ctx_tensors(c.ctx, backend);
        REQUIRE(buf != nullptr);
        ggml_cgraph* g = ggml_new_graph(c.ctx);
        ggml_build_forward_expand(g, y);

        f.loopback->stop_host();
        const auto t0 = std::chrono::steady_clock::now();
        CHECK(ggml_backend_graph_compute(backend, g) == GGML_STATUS_FAILED);
        CHECK(f.registry->remote()->lost());
        CHECK(ggml_backend_buft_alloc_buffer(buft, 4096) == nullptr);
        std::vector<float> v(64, 1.f);
        ggml_backend_tensor_set(x, v.data(), 0, ggml_nbytes(x));
        ggml_backend_tensor_get(x, v.data(), 0, ggml_nbytes(x));
        CHECK(v == std::vector<float>(64, 0.f)); // defined contents on failure
        CHECK_FALSE(ggml_backend_dev_supports_op(f.dev, y));
        CHECK(ggml_backend_dev_init(f.dev, nullptr) == nullptr);
        ggml_backend_buffer_free(buf); // logs, does not hang
        const auto took = std::chrono::steady_clock::now() - t0;
        CHECK(took < std::chrono::seconds(1));
        std::lock_guard lk(log_mu);
        CHECK(ggml_log_text.find("the host is lost") != std::string::npos);
        ggml_backend_free(backend);
    }
    ggml_log_set(old_cb, old_ud);
}

TEST_CASE("many threads, each with its own stream and buffers, on one device") {
    Fixture f;
    const int threads = std::getenv("APIR_GGML_TEST_THREADS")
                            ? std::atoi(std::getenv("APIR_GGML_TEST_THREADS"))
                            : 4;
    const int rounds =
        std::getenv("APIR_GGML_TEST_ROUNDS") ? std::atoi(std::getenv("APIR_GGML_TEST_ROUNDS")) : 20;
    std::atomic<int> done{0}, failures{0};
    std::vector<std::thread> pool;
    for (int t = 0; t < threads; ++t)
        pool.emplace_back([&, t] {
            ggml_backend_t backend = ggml_backend_dev_init(f.dev, nullptr);
            for (int r = 0; r < rounds; ++r)
                if (!matmul_add_round(backend, static_cast<uint32_t>(t * 1000 + r)).empty())
                    failures.fetch_add(1);
            ggml_backend_free(backend);
            done.fetch_add(1);
        });
    for (auto& th : pool)
        th.join();
    CHECK(done == threads);
    CHECK(failures == 0);
    CHECK(f.forwards(22) == static_cast<uint64_t>(threads * rounds));
}

int main(int argc, char** argv) {
    const std::string p = peer_dir();
    if (p.empty() || !std::filesystem::exists(p + "/lib/libggml-virtgpu-backend.so.0") ||
        !std::filesystem::exists(p + "/lib/libggml-cpu.so.0")) {
        std::printf("SKIP: APIR_GGML_PEER_DIR (%s) does not hold ggml's host backend and CPU "
                    "backend (lib/libggml-virtgpu-backend.so.0, lib/libggml-cpu.so.0)\n",
                    p.empty() ? "unset" : p.c_str());
        return 77;
    }
    ggml_backend_load_all(); // the CPU backend, for the test that needs one
    return Catch::Session().run(argc, argv);
}
