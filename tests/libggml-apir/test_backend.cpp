// libggml-apir through ggml's own API, against ggml's real host backend over loopback
// (ggml's libggml-virtgpu-backend over ggml's CPU backend, in this process). Exits 77
// when APIR_GGML_PEER_DIR does not hold the peer.
#define CATCH_CONFIG_RUNNER
#include "catch.hpp"

#include "registry.hpp"
#include "tensor_codec.hpp"

#include "apir/loopback.hpp"

#include "ggml-alloc.h"
#include "ggml-backend-impl.h" // ggml_backend_buffer_copy_tensor
#include "ggml-backend.h"
#include "ggml.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
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
    // A deadline only a broken host reaches: 24 MiB chunks under TSan on a crowded
    // 2-CPU machine have taken over 2 s.
    c.call_timeout = std::chrono::seconds(30);
    return c;
}

/// The project's test backend (tests/ggml) as the host, misbehaving as `hostile` says.
BackendConfig test_backend_config(const std::string& hostile = {},
                                  std::chrono::milliseconds timeout = std::chrono::seconds(30)) {
    BackendConfig c;
    c.transport = TransportKind::loopback;
    c.backend_library = APIR_GGML_TEST_BACKEND;
    c.host_config["apir.load_library.path"] = c.backend_library;
    if (!hostile.empty()) c.host_config["ggml.test.hostile"] = hostile;
    c.call_timeout = timeout;
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

/// On a backend's device: x (64 floats), y = x + x, their buffer (null when the
/// allocation failed) and the graph computing y.
struct AddGraph {
    Ctx c;
    ggml_tensor* x = ggml_new_tensor_1d(c.ctx, GGML_TYPE_F32, 64);
    ggml_tensor* y = ggml_add(c.ctx, x, x);
    ggml_backend_buffer_t buf;
    ggml_cgraph* g = ggml_new_graph(c.ctx);
    explicit AddGraph(ggml_backend_t backend)
        : buf(ggml_backend_alloc_ctx_tensors(c.ctx, backend)) {
        ggml_build_forward_expand(g, y);
    }
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

TEST_CASE("get_memory answers again from the host's last answer while it is young; a buffer "
          "made or freed, or its age, renews it") {
    BackendConfig c = loopback_config();
    const auto max_age = GENERATE(std::chrono::milliseconds(0), std::chrono::milliseconds(300));
    CAPTURE(max_age.count());
    c.memory_max_age = max_age;
    Fixture f(c);
    const uint64_t asked0 = f.forwards(5); // device_get_memory
    size_t free = 0, total = 0;
    auto memory = [&] {
        free = total = 0;
        ggml_backend_dev_memory(f.dev, &free, &total);
        CHECK(total > 0);
        CHECK(free <= total);
    };
    const auto t0 = std::chrono::steady_clock::now();
    memory();
    memory();
    memory();
    // (A margin for the cache's coarse clock, a few ms a tick.)
    const bool young =
        std::chrono::steady_clock::now() - t0 < max_age - std::chrono::milliseconds(20);
    // max age 0: a call each time; otherwise one call (unless this machine took longer
    // than the max age over three queries).
    if (max_age.count() == 0)
        CHECK(f.forwards(5) == asked0 + 3);
    else if (young)
        CHECK(f.forwards(5) == asked0 + 1);
    const uint64_t asked1 = f.forwards(5);
    ggml_backend_buffer_t buf =
        ggml_backend_buft_alloc_buffer(ggml_backend_dev_buffer_type(f.dev), 4096);
    REQUIRE(buf != nullptr);
    memory();
    CHECK(f.forwards(5) == asked1 + 1); // the new buffer renewed it
    ggml_backend_buffer_free(buf);
    memory();
    CHECK(f.forwards(5) == asked1 + 2); // and so did its free
    if (max_age.count() > 0) {
        std::this_thread::sleep_for(max_age + std::chrono::milliseconds(50));
        memory();
        CHECK(f.forwards(5) == asked1 + 3); // too old: asked again
    }
    // Readers on many threads while another makes and frees buffers: every answer is
    // one the host gave (total > 0, free <= total).
    std::atomic<int> bad{0};
    std::atomic<bool> stop{false};
    std::vector<std::thread> readers;
    for (int i = 0; i < 4; ++i)
        readers.emplace_back([&] {
            for (int n = 0; n < 2000 && !stop; ++n) {
                size_t fr = 0, to = 0;
                ggml_backend_dev_memory(f.dev, &fr, &to);
                if (to == 0 || fr > to) ++bad;
            }
        });
    for (int n = 0; n < 20; ++n)
        if (auto* b = ggml_backend_buft_alloc_buffer(ggml_backend_dev_buffer_type(f.dev), 4096))
            ggml_backend_buffer_free(b);
    stop = true;
    for (auto& r : readers)
        r.join();
    CHECK(bad == 0);
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
    SECTION("tensors of every ggml type travel (k-quants and i-quants too)") {
        int types = 0;
        for (int ti = 0; ti < GGML_TYPE_COUNT; ++ti) {
            const auto type = static_cast<ggml_type>(ti);
            if (ggml_type_size(type) == 0) continue; // a removed type
            CAPTURE(ggml_type_name(type));
            Ctx c;
            // Two rows of two blocks, the second row read back at an offset.
            const int64_t row = 2 * ggml_blck_size(type);
            ggml_tensor* x = ggml_new_tensor_2d(c.ctx, type, row, 2);
            ggml_backend_buffer_t buf = ggml_backend_alloc_ctx_tensors(c.ctx, backend);
            REQUIRE(buf != nullptr);
            std::vector<uint8_t> v(ggml_nbytes(x)), got(v.size(), 0);
            for (size_t i = 0; i < v.size(); ++i)
                v[i] = static_cast<uint8_t>(i * 7 + ti);
            ggml_backend_tensor_set(x, v.data(), 0, v.size());
            ggml_backend_tensor_get(x, got.data(), 0, got.size());
            CHECK(got == v);
            const size_t half = v.size() / 2;
            std::vector<uint8_t> second(half);
            ggml_backend_tensor_get(x, second.data(), half, half);
            CHECK(std::equal(second.begin(), second.end(), v.begin() + static_cast<long>(half)));
            ggml_backend_buffer_free(buf);
            ++types;
        }
        CHECK(types == 35); // ggml d99724f2: 43 ids, 8 of them removed types
    }
    SECTION("a transfer larger than a staging chunk goes in pieces") {
        Ctx c;
        const auto chunk =
            static_cast<int64_t>(f.registry->remote()->device().options().chunk_size);
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

TEST_CASE("apir::ggml sizes every type as ggml does") {
    STATIC_REQUIRE(ggml::type_count == GGML_TYPE_COUNT);
    for (int ti = 0; ti < GGML_TYPE_COUNT; ++ti) {
        const auto type = static_cast<ggml_type>(ti);
        CAPTURE(ti);
        const auto tt = ggml::type_traits(static_cast<ggml::Type>(ti));
        if (ggml_type_size(type) == 0) {
            CHECK_FALSE(tt); // removed from ggml: unknown here too
            continue;
        }
        REQUIRE(tt);
        CHECK(tt->name == ggml_type_name(type));
        CHECK(tt->block_size == ggml_blck_size(type));
        CHECK(tt->type_size == ggml_type_size(type));
    }
    CHECK_FALSE(ggml::type_traits(static_cast<ggml::Type>(GGML_TYPE_COUNT)));
}

TEST_CASE("zero-copy buffers: with apir's host, set, get, memset and clear make no call") {
#ifndef APIR_GGML_HOST_BACKEND
    WARN("SKIPPED: built without libggml-apir-host (src/libggml-apir-host)");
    return;
#else
    const bool zero_copy = GENERATE(true, false);
    CAPTURE(zero_copy);
    BackendConfig c = loopback_config();
    c.backend_library = APIR_GGML_HOST_BACKEND;
    c.host_config["apir.load_library.path"] = c.backend_library;
    c.zero_copy = zero_copy;
    Fixture f(c);
    ggml_backend_t backend = ggml_backend_dev_init(f.dev, nullptr);
    REQUIRE(backend != nullptr);
    const auto calls = [&] {
        uint64_t n = 0;
        for (uint32_t id : {17u, 18u, 20u}) // set, get, clear
            n += f.forwards(id);
        return n;
    };
    const uint64_t before = calls();
    REQUIRE(matmul_add_round(backend, 5).empty()); // sets and a get, then a graph
    Ctx cx;
    ggml_tensor* x = ggml_new_tensor_1d(cx.ctx, GGML_TYPE_F32, 1000);
    ggml_backend_buffer_t buf = ggml_backend_alloc_ctx_tensors(cx.ctx, backend);
    REQUIRE(buf != nullptr);
    auto v = random_floats(1000, 9);
    ggml_backend_tensor_set(x, v.data(), 0, ggml_nbytes(x));
    ggml_backend_tensor_memset(x, 0, 40, 8); // floats 10 and 11
    v[10] = v[11] = 0.f;
    std::vector<float> got(1000);
    ggml_backend_tensor_get(x, got.data(), 0, ggml_nbytes(x));
    CHECK(got == v);
    std::vector<float> part(3);
    ggml_backend_tensor_get(x, part.data(), 9 * sizeof(float), 3 * sizeof(float));
    CHECK(part == std::vector<float>{v[9], 0.f, 0.f});
    ggml_backend_buffer_clear(buf, 0);
    ggml_backend_tensor_get(x, got.data(), 0, ggml_nbytes(x));
    CHECK(got == std::vector<float>(1000, 0.f));
    // The host computes on the same bytes: a graph reads what was set in place and
    // the guest reads its result in place.
    ggml_tensor* y = ggml_scale(cx.ctx, x, 2.f);
    ggml_backend_buffer_t ybuf = ggml_backend_alloc_buffer(backend, ggml_nbytes(y) + 256);
    REQUIRE(ybuf != nullptr);
    ggml_tallocr ta = ggml_tallocr_new(ybuf);
    REQUIRE(ggml_tallocr_alloc(&ta, y) == GGML_STATUS_SUCCESS);
    ggml_backend_tensor_set(x, v.data(), 0, ggml_nbytes(x));
    ggml_cgraph* g = ggml_new_graph(cx.ctx);
    ggml_build_forward_expand(g, y);
    REQUIRE(ggml_backend_graph_compute(backend, g) == GGML_STATUS_SUCCESS);
    ggml_backend_tensor_get(y, got.data(), 0, ggml_nbytes(y));
    for (size_t i = 0; i < v.size(); ++i)
        CHECK(got[i] == 2.f * v[i]);
    // A range past the tensor is refused in place too (and logged), not copied, and
    // x's bytes are untrusted until set again.
    std::vector<float> big(1001, 1.f);
    ggml_backend_buffer_t xb = x->buffer;
    xb->iface.set_tensor(xb, x, big.data(), 0, big.size() * sizeof(float));
    ggml_backend_tensor_get(x, got.data(), 0, ggml_nbytes(x));
    CHECK(std::isnan(got[0]));
    ggml_backend_tensor_set(x, v.data(), 0, ggml_nbytes(x));
    ggml_backend_tensor_get(x, got.data(), 0, ggml_nbytes(x));
    CHECK(got == v);
    if (zero_copy)
        CHECK(calls() == before); // every set, get, memset and clear was a copy here
    else
        CHECK(calls() > before + 8);
    ggml_backend_buffer_free(ybuf);
    ggml_backend_buffer_free(buf);
    ggml_backend_free(backend);
#endif
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

TEST_CASE("a backend library that is not a ggml backend: the error says what to check") {
    BackendConfig c = loopback_config();
    c.backend_library = APIR_DEMO_BACKEND_PATH; // loads, but speaks the demo's commands
    c.host_config["apir.load_library.path"] = c.backend_library;
    LoopbackOptions lo;
    lo.host.config = c.host_config;
    auto remote = std::make_unique<Remote>(AnyTransport(LoopbackTransport(std::move(lo))), c,
                                           ggml_logger(LogLevel::error));
    auto r = Registry::create(std::move(remote));
    REQUIRE_FALSE(r);
    INFO(r.error().message());
    CHECK(r.error().message().find("device_get_count") != std::string::npos);
    CHECK(r.error().message().find("is it a ggml host backend") != std::string::npos);
    CHECK(r.error().message().find("APIR_GGML_BACKEND_LIBRARY") != std::string::npos);
}

TEST_CASE("ggml's own virtio-gpu frontend in this process: libggml-apir says what to do") {
    // A ggml with the frontend built in (the peer's) registers it whether or not it found
    // a device; without one (no render node here) its context is null: no conflict. A
    // context stands in for a frontend that found the VM's device.
    ggml_backend_reg_t frontend = ggml_backend_reg_by_name(ggml_virtgpu_reg_name);
    if (frontend == nullptr) { // a ggml without it: one like it
        static ggml_backend_reg_i iface{};
        iface.get_name = [](ggml_backend_reg_t) { return ggml_virtgpu_reg_name; };
        iface.get_device_count = [](ggml_backend_reg_t) -> size_t { return 0; };
        static ggml_backend_reg stand_in{GGML_BACKEND_API_VERSION, iface, nullptr};
        ggml_backend_register(&stand_in);
        frontend = &stand_in;
    }
    REQUIRE(frontend->context == nullptr);
    REQUIRE(check_no_ggml_virtgpu_frontend());
    static int connection = 0;
    frontend->context = &connection;
    auto c = check_no_ggml_virtgpu_frontend();
    REQUIRE_FALSE(c);
    CHECK(c.error() == Errc::backend_already_initialized);
    INFO(c.error().message());
    CHECK(c.error().message().find("GGML_VIRTGPU") != std::string::npos);
    CHECK(c.error().message().find("use one of them") != std::string::npos);
    // The host refusing a second initialization gets the same explanation.
    CHECK(connect_hint(Error(Errc::backend_already_initialized)).find("GGML_VIRTGPU") !=
          std::string::npos);
    CHECK(connect_hint(Error(Errc::timeout)).empty());
    frontend->context = nullptr; // as it was
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
        CHECK_FALSE(f.registry->remote()->device().lost()); // the host is fine
    }
    SECTION("the host is gone: every later call fails at once") {
        ggml_backend_t backend = ggml_backend_dev_init(f.dev, nullptr);
        AddGraph a(backend);
        REQUIRE(a.buf != nullptr);
        auto* x = a.x;
        auto* y = a.y;
        auto* buf = a.buf;
        auto* g = a.g;

        f.loopback->stop_host();
        const auto t0 = std::chrono::steady_clock::now();
        CHECK(ggml_backend_graph_compute(backend, g) == GGML_STATUS_FAILED);
        CHECK(f.registry->remote()->device().lost());
        CHECK(ggml_backend_buft_alloc_buffer(buft, 4096) == nullptr);
        std::vector<float> v(64, 1.f);
        ggml_backend_tensor_set(x, v.data(), 0, ggml_nbytes(x));
        ggml_backend_tensor_get(x, v.data(), 0, ggml_nbytes(x));
        // A failed get fills the destination with 0xff bytes: NaN, not plausible data.
        CHECK(std::isnan(v[0]));
        CHECK(std::vector<uint8_t>(reinterpret_cast<uint8_t*>(v.data()),
                                   reinterpret_cast<uint8_t*>(v.data() + 64)) ==
              std::vector<uint8_t>(64 * sizeof(float), 0xff));
        CHECK_FALSE(ggml_backend_dev_supports_op(f.dev, y));
        CHECK(ggml_backend_dev_init(f.dev, nullptr) == nullptr);
        ggml_backend_buffer_free(buf); // logs, does not hang
        const auto took = std::chrono::steady_clock::now() - t0;
        CHECK(took < std::chrono::seconds(3)); // each call would wait its 30 s deadline
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

namespace {

/// Captures ggml's log for the scope; text() is what apir logged meanwhile.
struct LogCapture {
    ggml_log_callback old_cb = nullptr;
    void* old_ud = nullptr;
    LogCapture() {
        ggml_log_get(&old_cb, &old_ud);
        std::lock_guard lk(log_mu);
        ggml_log_text.clear();
        ggml_log_set(capture_log, nullptr);
    }
    ~LogCapture() { ggml_log_set(old_cb, old_ud); }
    static std::string text() {
        std::lock_guard lk(log_mu);
        return ggml_log_text;
    }
};

bool all_bytes(const void* p, size_t n, uint8_t v) {
    const auto* b = static_cast<const uint8_t*>(p);
    for (size_t i = 0; i < n; ++i)
        if (b[i] != v) return false;
    return true;
}

} // namespace

TEST_CASE("a set that failed leaves its bytes untrusted: get and compute fail loudly until "
          "they are written again") {
    LogCapture log;
    Fixture f(test_backend_config("refuse_bad_set"));
    ggml_backend_t backend = ggml_backend_dev_init(f.dev, nullptr);
    AddGraph a(backend);
    REQUIRE(a.buf != nullptr);
    auto* x = a.x;
    auto* y = a.y;
    auto* buf = a.buf;
    auto* g = a.g;

    ggml_set_name(x, "bad-x"); // the host refuses this set
    std::vector<float> v = random_floats(64, 11), got(64, 0.f);
    ggml_backend_tensor_set(x, v.data(), 0, ggml_nbytes(x));
    CHECK(LogCapture::text().find("set_tensor 'bad-x'") != std::string::npos);
    CHECK_FALSE(f.registry->remote()->device().lost()); // a refusal is an answer

    // Reading the untrusted bytes: the 0xff fill and an error, without a call.
    const uint64_t gets = f.forwards(18), computes = f.forwards(22);
    ggml_backend_tensor_get(x, got.data(), 0, ggml_nbytes(x));
    CHECK(all_bytes(got.data(), ggml_nbytes(x), 0xff));
    CHECK(f.forwards(18) == gets);
    CHECK(LogCapture::text().find("untrusted") != std::string::npos);
    // A graph that reads them is not computed.
    CHECK(ggml_backend_graph_compute(backend, g) == GGML_STATUS_FAILED);
    CHECK(f.forwards(22) == computes);
    // Part of them written again: the rest stays untrusted.
    ggml_set_name(x, "x");
    ggml_backend_tensor_set(x, v.data(), 0, 32 * sizeof(float));
    CHECK(ggml_backend_graph_compute(backend, g) == GGML_STATUS_FAILED);
    // All of them written again: trusted, and the graph computes.
    ggml_backend_tensor_set(x, v.data(), 0, ggml_nbytes(x));
    ggml_backend_tensor_get(x, got.data(), 0, ggml_nbytes(x));
    CHECK(got == v);
    CHECK(ggml_backend_graph_compute(backend, g) == GGML_STATUS_SUCCESS);
    ggml_backend_tensor_get(y, got.data(), 0, ggml_nbytes(y));
    for (int i = 0; i < 64; ++i)
        CHECK(got[i] == v[i] + v[i]);
    // A clear that succeeds trusts the whole buffer again.
    ggml_set_name(x, "bad-again");
    ggml_backend_tensor_set(x, v.data(), 0, ggml_nbytes(x));
    CHECK(ggml_backend_graph_compute(backend, g) == GGML_STATUS_FAILED);
    ggml_backend_buffer_clear(buf, 0);
    CHECK(ggml_backend_graph_compute(backend, g) == GGML_STATUS_SUCCESS);
    ggml_backend_buffer_free(buf);
    ggml_backend_free(backend);
}

TEST_CASE("a graph that failed leaves its outputs untrusted: a get of them fails loudly until "
          "they are computed or written again") {
    LogCapture log;
    Fixture f(test_backend_config("status_failed"));
    ggml_backend_t backend = ggml_backend_dev_init(f.dev, nullptr);
    AddGraph a(backend);
    REQUIRE(a.buf != nullptr);
    auto* x = a.x;
    auto* y = a.y;
    auto* buf = a.buf;
    auto* g = a.g;

    std::vector<float> v = random_floats(64, 12), got(64, 0.f);
    ggml_backend_tensor_set(x, v.data(), 0, ggml_nbytes(x));
    ggml_backend_tensor_set(y, v.data(), 0, ggml_nbytes(y));
    CHECK(ggml_backend_graph_compute(backend, g) == GGML_STATUS_FAILED);
    // y's bytes are whatever the failed compute left: the 0xff fill and an error, no call.
    const uint64_t gets = f.forwards(18);
    ggml_backend_tensor_get(y, got.data(), 0, ggml_nbytes(y));
    CHECK(all_bytes(got.data(), ggml_nbytes(y), 0xff));
    CHECK(f.forwards(18) == gets);
    CHECK(LogCapture::text().find("untrusted") != std::string::npos);
    // The graph's input was not touched by it: still trusted.
    ggml_backend_tensor_get(x, got.data(), 0, ggml_nbytes(x));
    CHECK(got == v);
    // Written again: trusted.
    ggml_backend_tensor_set(y, v.data(), 0, ggml_nbytes(y));
    ggml_backend_tensor_get(y, got.data(), 0, ggml_nbytes(y));
    CHECK(got == v);
    ggml_backend_buffer_free(buf);
    ggml_backend_free(backend);
}

TEST_CASE("sixteen threads transferring at once: no wrong data is ever reported as success") {
    // ggml's host (every transfer a call through staging) and, where built, apir's
    // (zero-copy buffers: every transfer a copy in place).
    bool zero_copy = false;
#ifdef APIR_GGML_HOST_BACKEND
    zero_copy = GENERATE(false, true);
#endif
    CAPTURE(zero_copy);
    BackendConfig hc = loopback_config();
#ifdef APIR_GGML_HOST_BACKEND
    if (zero_copy) {
        hc.backend_library = APIR_GGML_HOST_BACKEND;
        hc.host_config["apir.load_library.path"] = hc.backend_library;
    }
#endif
    Fixture f(hc);
    const uint64_t transfers0 = f.forwards(17) + f.forwards(18);
    constexpr int threads = 16, rounds = 20;
    constexpr int64_t n = 16384; // 64 KiB per tensor
    ggml_backend_t backend = ggml_backend_dev_init(f.dev, nullptr);
    Ctx c(threads);
    std::vector<ggml_tensor*> ts;
    for (int i = 0; i < threads; ++i)
        ts.push_back(ggml_new_tensor_1d(c.ctx, GGML_TYPE_F32, n));
    ggml_backend_buffer_t buf = ggml_backend_alloc_ctx_tensors(c.ctx, backend);
    REQUIRE(buf != nullptr);
    std::atomic<int> wrong{0}, failed{0}, right{0};
    std::vector<std::thread> pool;
    for (int t = 0; t < threads; ++t)
        pool.emplace_back([&, t] {
            std::vector<float> got(n);
            for (int r = 0; r < rounds; ++r) {
                auto v = random_floats(n, static_cast<uint32_t>(t * 1000 + r));
                ggml_backend_tensor_set(ts[t], v.data(), 0, n * sizeof(float));
                ggml_backend_tensor_get(ts[t], got.data(), 0, n * sizeof(float));
                // Every byte: this thread's data, or the whole failure fill (with an
                // error logged); nothing in between, nothing of another thread.
                if (std::memcmp(got.data(), v.data(), n * sizeof(float)) == 0)
                    ++right;
                else if (all_bytes(got.data(), n * sizeof(float), 0xff))
                    ++failed;
                else
                    ++wrong;
            }
        });
    for (auto& th : pool)
        th.join();
    CHECK(wrong == 0);
    CHECK(right + failed == threads * rounds);
    // Transfers wait their turn for staging (Session::stage within the deadline): none
    // fails only because other threads are busy. Needs the session's waiting staging
    // pool; with a pool that fails at once beyond its bound some rounds fail here.
    CHECK(failed == 0);
    if (zero_copy)
        CHECK(f.forwards(17) + f.forwards(18) == transfers0); // all in place
    else
        CHECK(f.forwards(17) + f.forwards(18) >= transfers0 + 2 * threads * rounds);
    ggml_backend_buffer_free(buf);
    ggml_backend_free(backend);
}

TEST_CASE("a call that timed out behind another stream's long compute does not lose the "
          "device") {
    LogCapture log;
    // Calls wait 200 ms; the host's graph takes 600 ms.
    Fixture f(test_backend_config("slow_compute", std::chrono::milliseconds(200)));
    ggml_backend_t backend = ggml_backend_dev_init(f.dev, nullptr);
    Ctx c;
    ggml_tensor* x = ggml_new_tensor_1d(c.ctx, GGML_TYPE_F32, 64);
    ggml_tensor* y = ggml_add(c.ctx, x, x);
    ggml_backend_buffer_t buf = ggml_backend_alloc_ctx_tensors(c.ctx, backend);
    REQUIRE(buf != nullptr);
    std::vector<float> v = random_floats(64, 3), got(64);
    ggml_backend_tensor_set(x, v.data(), 0, ggml_nbytes(x));
    ggml_cgraph* g = ggml_new_graph(c.ctx);
    ggml_build_forward_expand(g, y);

    std::atomic<bool> computing{false};
    ggml_status st = GGML_STATUS_FAILED;
    std::thread compute([&] {
        computing = true;
        st = ggml_backend_graph_compute(backend, g);
    });
    while (!computing || f.registry->remote()->device().in_flight() == 0)
        std::this_thread::yield();
    std::this_thread::sleep_for(std::chrono::milliseconds(20)); // the graph is on the host
    size_t free = 1, total = 1;
    ggml_backend_dev_memory(f.dev, &free, &total); // queued behind the graph: times out
    CHECK(total == 0);
    compute.join();
    CHECK(st == GGML_STATUS_SUCCESS);
    CHECK_FALSE(f.registry->remote()->device().lost());
    // The device goes on.
    ggml_backend_tensor_get(y, got.data(), 0, ggml_nbytes(y));
    CHECK(got[5] == v[5] + v[5]);
    ggml_backend_dev_memory(f.dev, &free, &total);
    CHECK(total > 0);
    ggml_backend_buffer_t more =
        ggml_backend_buft_alloc_buffer(ggml_backend_dev_buffer_type(f.dev), 4096);
    CHECK(more != nullptr);
    CHECK(LogCapture::text().find("busy, not lost") != std::string::npos);
    if (more) ggml_backend_buffer_free(more);
    ggml_backend_buffer_free(buf);
    ggml_backend_free(backend);
}

TEST_CASE("a call that timed out waiting for the host alone marks the device lost") {
    Fixture f(test_backend_config("slow_memory", std::chrono::milliseconds(200)));
    size_t free = 1, total = 1;
    ggml_backend_dev_memory(f.dev, &free, &total);
    CHECK(total == 0);
    CHECK(f.registry->remote()->device().lost());
}

TEST_CASE("host values ggml relies on are checked before ggml sees them") {
    LogCapture log;
    SECTION("a base not aligned to the buffer type's alignment: null") {
        Fixture f(test_backend_config("base_unaligned"));
        CHECK(ggml_backend_buft_alloc_buffer(ggml_backend_dev_buffer_type(f.dev), 4096) == nullptr);
        CHECK(LogCapture::text().find("not aligned") != std::string::npos);
        CHECK(f.forwards(21) == 1); // the host's buffer was freed
    }
    SECTION("a base whose buffer wraps the address space: null") {
        Fixture f(test_backend_config("base_wraps"));
        CHECK(ggml_backend_buft_alloc_buffer(ggml_backend_dev_buffer_type(f.dev), 4096) == nullptr);
        CHECK(LogCapture::text().find("wraps") != std::string::npos);
    }
    for (const char* mode : {"alignment_huge", "max_size_small", "bad_alignment"}) {
        DYNAMIC_SECTION("a buffer type whose " << mode << ": no device") {
            BackendConfig c = test_backend_config(mode);
            LoopbackOptions lo;
            lo.host.config = c.host_config;
            auto remote = std::make_unique<Remote>(
                AnyTransport(std::make_unique<LoopbackTransport>(std::move(lo))), c,
                ggml_logger(LogLevel::warn));
            auto r = Registry::create(std::move(remote));
            REQUIRE_FALSE(r);
            CHECK(r.error().name() == std::string_view("DECODE_BAD_VALUE"));
        }
    }
}

TEST_CASE("a view whose byte size wraps 64 bits is outside its buffer: never sent") {
    LogCapture log;
    Fixture f;
    ggml_backend_t backend = ggml_backend_dev_init(f.dev, nullptr);
    Ctx c;
    ggml_tensor* x = ggml_new_tensor_1d(c.ctx, GGML_TYPE_F32, 64);
    ggml_backend_buffer_t buf = ggml_backend_alloc_ctx_tensors(c.ctx, backend);
    REQUIRE(buf != nullptr);
    // ne and nb fit 32 bits; (ne1-1)*nb1 + (ne2-1)*nb2 = 2^64 + 2, so ggml_nbytes says 6.
    ggml_tensor* w = ggml_view_1d(c.ctx, x, 1, 0);
    w->ne[1] = 0xffffffff;
    w->nb[1] = 0xffffffff;
    w->ne[2] = 7;
    w->nb[2] = 0x80000000;
    w->nb[3] = 0x80000000; // ne[3] is 1: no bytes of its own
    REQUIRE(ggml_nbytes(w) == 6);
    REQUIRE(ggml_backend_view_init(w) == GGML_STATUS_SUCCESS);
    const uint64_t sets = f.forwards(17), computes = f.forwards(22);
    float one = 1.f;
    ggml_backend_tensor_set(w, &one, 0, sizeof one);
    CHECK(f.forwards(17) == sets);
    CHECK(LogCapture::text().find("wraps 64 bits") != std::string::npos);
    ggml_tensor* y = ggml_add(c.ctx, x, x);
    y->src[1] = w; // a source the host would read from
    ggml_backend_buffer_t bs = ggml_backend_alloc_buffer(backend, 4096);
    ggml_tallocr ta = ggml_tallocr_new(bs);
    REQUIRE(ggml_tallocr_alloc(&ta, y) == GGML_STATUS_SUCCESS);
    ggml_cgraph* g = ggml_new_graph(c.ctx);
    ggml_graph_add_node(g, y);
    CHECK(ggml_backend_graph_compute(backend, g) == GGML_STATUS_FAILED);
    CHECK(f.forwards(22) == computes);
    ggml_backend_buffer_free(bs);
    ggml_backend_buffer_free(buf);
    ggml_backend_free(backend);
}

TEST_CASE("graphs ggml's host cannot survive are refused, never sent") {
    LogCapture log;
    Fixture f;
    ggml_backend_t backend = ggml_backend_dev_init(f.dev, nullptr);
    SECTION("a 300000-deep chain of sources left out of the node list") {
        constexpr int depth = 300000;
        ggml_init_params p{ggml_tensor_overhead() * (depth + 4) + ggml_graph_overhead(), nullptr,
                           true};
        ggml_context* ctx = ggml_init(p);
        ggml_tensor* x = ggml_new_tensor_1d(ctx, GGML_TYPE_F32, 4);
        ggml_backend_buffer_t buf = ggml_backend_alloc_ctx_tensors(ctx, backend);
        REQUIRE(buf != nullptr);
        ggml_tensor* t = x;
        for (int i = 0; i < depth; ++i) {
            t = ggml_add(ctx, t, x);
            t->buffer = buf;
            t->data = x->data; // every link inside the buffer
        }
        ggml_cgraph* g = ggml_new_graph(ctx);
        ggml_graph_add_node(g, t); // only the last: the host would recurse through the rest
        const uint64_t computes = f.forwards(22);
        CHECK(ggml_backend_graph_compute(backend, g) == GGML_STATUS_FAILED);
        CHECK(f.forwards(22) == computes);
        CHECK(LogCapture::text().find("deeper than") != std::string::npos);
        ggml_backend_buffer_free(buf);
        ggml_free(ctx);
    }
    SECTION("an op past GGML_OP_COUNT, a custom op") {
        for (int op : {static_cast<int>(GGML_OP_COUNT), static_cast<int>(GGML_OP_COUNT) + 7,
                       static_cast<int>(GGML_OP_CUSTOM), static_cast<int>(GGML_OP_MAP_CUSTOM1)}) {
            Ctx c;
            ggml_tensor* x = ggml_new_tensor_1d(c.ctx, GGML_TYPE_F32, 4);
            ggml_tensor* y = ggml_add(c.ctx, x, x);
            ggml_backend_buffer_t buf = ggml_backend_alloc_ctx_tensors(c.ctx, backend);
            REQUIRE(buf != nullptr);
            y->op = static_cast<ggml_op>(op);
            ggml_cgraph* g = ggml_new_graph(c.ctx);
            ggml_graph_add_node(g, y);
            const uint64_t computes = f.forwards(22);
            CHECK(ggml_backend_graph_compute(backend, g) == GGML_STATUS_FAILED);
            CHECK(f.forwards(22) == computes);
            ggml_backend_buffer_free(buf);
        }
    }
    // The device carries on.
    CHECK(matmul_add_round(backend, 9).empty());
    ggml_backend_free(backend);
}

TEST_CASE("a buffer freed while another thread computes on it: no use after free, the freed "
          "handle never reaches the host") {
    Fixture f(test_backend_config());
    ggml_backend_t backend = ggml_backend_dev_init(f.dev, nullptr);
    SECTION("freed before the compute: refused here") {
        AddGraph a(backend);
        REQUIRE(a.buf != nullptr);
        auto* g = a.g;
        ggml_backend_buffer_free(a.buf); // the graph's tensors still point at it
        const uint64_t computes = f.forwards(22);
        CHECK(ggml_backend_graph_compute(backend, g) == GGML_STATUS_FAILED);
        CHECK(f.forwards(22) == computes);
    }
    SECTION("freed by another thread during computes") {
        constexpr int rounds = 30;
        int succeeded = 0, refused = 0;
        for (int r = 0; r < rounds; ++r) {
            Ctx c;
            ggml_tensor* x = ggml_new_tensor_1d(c.ctx, GGML_TYPE_F32, 4096);
            ggml_tensor* y = ggml_add(c.ctx, x, x);
            ggml_backend_buffer_t buf = ggml_backend_alloc_ctx_tensors(c.ctx, backend);
            REQUIRE(buf != nullptr);
            ggml_cgraph* g = ggml_new_graph(c.ctx);
            ggml_build_forward_expand(g, y);
            const uint64_t sent = f.forwards(22);
            std::atomic<bool> go{false};
            std::thread freer([&] {
                while (!go)
                    std::this_thread::yield();
                ggml_backend_buffer_free(buf);
            });
            std::vector<ggml_status> st;
            go = true;
            for (int i = 0; i < 20; ++i)
                st.push_back(ggml_backend_graph_compute(backend, g));
            freer.join();
            for (ggml_status s : st)
                (s == GGML_STATUS_SUCCESS ? succeeded : refused) += 1;
            // Every compute that reached the host found its buffer there (the test host
            // refuses unknown handles, which would fail the compute after sending it).
            const auto ok =
                static_cast<uint64_t>(std::count(st.begin(), st.end(), GGML_STATUS_SUCCESS));
            CHECK(f.forwards(22) - sent == ok);
        }
        CHECK(succeeded + refused == rounds * 20);
        CHECK(f.forwards(21) >= static_cast<uint64_t>(rounds)); // every buffer freed on the host
    }
    ggml_backend_free(backend);
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

TEST_CASE("a graph built again unchanged reuses its encoding; any change is encoded anew") {
    // Tensors placed in a pretend buffer: encoding reads only their fields and addresses.
    alignas(64) static std::byte memory[4096];
    auto* const gbuf = reinterpret_cast<ggml_backend_buffer*>(uintptr_t{0x1000});
    RemoteBuffer rb{{ggml::detail::HandleAccess::make<ggml::BufferTag>(0x8000000000000123ull),
                     {},
                     sizeof memory},
                    reinterpret_cast<uintptr_t>(memory)};
    int resolved = 0;
    const BufferResolver resolve = [&](const ggml_backend_buffer* b) -> const RemoteBuffer* {
        ++resolved;
        return b == gbuf ? &rb : nullptr;
    };
    Ctx c;
    ggml_tensor* x = ggml_new_tensor_1d(c.ctx, GGML_TYPE_F32, 8);
    ggml_tensor* s = ggml_scale(c.ctx, x, 2.0f);
    ggml_tensor* y = ggml_add(c.ctx, s, x);
    size_t at = 0;
    for (ggml_tensor* t : {x, s, y}) {
        t->buffer = gbuf;
        t->data = memory + at;
        at += 64;
    }
    ggml_cgraph* g = ggml_new_graph(c.ctx);
    ggml_build_forward_expand(g, y);

    GraphEncoding e;
    auto encoded = [&] {
        std::vector<std::byte> out(e.size());
        REQUIRE(e.write(out));
        return out;
    };
    REQUIRE(e.build(g, resolve));
    CHECK_FALSE(e.reused());
    CHECK(e.node_count() == 2);
    CHECK(e.inputs() == std::vector<const ggml_tensor*>{x});
    const auto first = encoded();
    // The same bytes are checked against ggml's rules (what the guest sends is valid).
    auto decoded = ggml::decode_graph(first);
    REQUIRE(decoded);
    CHECK(decoded->tensors.size() == 3);

    resolved = 0;
    REQUIRE(e.build(g, resolve));
    CHECK(e.reused());
    CHECK(resolved == 1); // the one buffer, not each tensor
    CHECK(encoded() == first);

    SECTION("an op parameter changed in place") {
        const float five = 5.0f;
        std::memcpy(s->op_params, &five, sizeof five);
        REQUIRE(e.build(g, resolve));
        CHECK_FALSE(e.reused());
        CHECK(encoded() != first);
        REQUIRE(e.build(g, resolve));
        CHECK(e.reused());
    }
    SECTION("a source changed, or a tensor's data moved") {
        y->src[1] = s;
        REQUIRE(e.build(g, resolve));
        CHECK_FALSE(e.reused());
        CHECK(e.inputs() == std::vector<const ggml_tensor*>{x}); // through s
        y->src[1] = x;
        x->data = memory + 512;
        REQUIRE(e.build(g, resolve));
        CHECK_FALSE(e.reused());
    }
    SECTION("the buffer is another remote buffer now (freed, and its pointer reused)") {
        rb.buffer.handle = ggml::detail::HandleAccess::make<ggml::BufferTag>(0x8000000000000456ull);
        REQUIRE(e.build(g, resolve));
        CHECK_FALSE(e.reused());
        CHECK(encoded() != first);
    }
    SECTION("another graph over the same tensors") {
        Ctx c2(0);
        ggml_cgraph* g2 = ggml_new_graph(c2.ctx);
        ggml_build_forward_expand(g2, s);
        REQUIRE(e.build(g2, resolve));
        CHECK_FALSE(e.reused());
        CHECK(e.node_count() == 1);
    }
    SECTION("a build that failed is not reused") {
        x->data = nullptr;
        CHECK_FALSE(e.build(g, resolve));
        x->data = memory;
        REQUIRE(e.build(g, resolve));
        CHECK_FALSE(e.reused());
        CHECK(encoded() == first);
    }
}

TEST_CASE("a graph computed again computes today's data and today's parameters") {
    Fixture f;
    ggml_backend_t backend = ggml_backend_dev_init(f.dev, nullptr);
    Ctx c;
    ggml_tensor* x = ggml_new_tensor_1d(c.ctx, GGML_TYPE_F32, 8);
    ggml_tensor* s = ggml_scale(c.ctx, x, 2.0f);
    ggml_tensor* y = ggml_add(c.ctx, s, x);
    ggml_tensor* w = ggml_mul(c.ctx, x, x); // a second graph, computed in turn with the first
    ggml_backend_buffer_t buf = ggml_backend_alloc_ctx_tensors(c.ctx, backend);
    REQUIRE(buf != nullptr);
    ggml_cgraph* g = ggml_new_graph(c.ctx);
    ggml_build_forward_expand(g, y);
    Ctx c2(0);
    ggml_cgraph* g2 = ggml_new_graph(c2.ctx);
    ggml_build_forward_expand(g2, w);
    // out / x after computing graph on x = k, 2k, ..., 8k.
    auto run = [&](ggml_cgraph* graph, ggml_tensor* out_t, float k) {
        std::vector<float> in(8), out(8);
        for (size_t i = 0; i < in.size(); ++i)
            in[i] = k * static_cast<float>(i + 1);
        ggml_backend_tensor_set(x, in.data(), 0, ggml_nbytes(x));
        REQUIRE(ggml_backend_graph_compute(backend, graph) == GGML_STATUS_SUCCESS);
        ggml_backend_tensor_get(out_t, out.data(), 0, ggml_nbytes(out_t));
        for (size_t i = 0; i < out.size(); ++i)
            out[i] /= in[i];
        return out;
    };
    auto times = [](float k) {
        std::vector<float> v(8);
        for (size_t i = 0; i < v.size(); ++i)
            v[i] = k * static_cast<float>(i + 1);
        return v;
    };
    for (float k = 1; k <= 3; ++k) {
        CHECK(run(g, y, k) == std::vector<float>(8, 3.0f)); // (2x + x) / x
        CHECK(run(g2, w, k) == times(k));                   // x * x / x
    }
    const float five = 5.0f;
    std::memcpy(s->op_params, &five, sizeof five);
    CHECK(run(g, y, 3) == std::vector<float>(8, 6.0f)); // 5x + x
    CHECK(run(g2, w, 2) == times(2));
    y->src[1] = s;
    CHECK(run(g, y, 1) == std::vector<float>(8, 10.0f)); // 5x + 5x
    CHECK(run(g2, w, 1) == times(1));
    ggml_backend_buffer_free(buf);
    ggml_backend_free(backend);
}

TEST_CASE("a graph changed and refused (untrusted input) is written to the blob when it runs") {
    LogCapture log;
    Fixture f(test_backend_config("refuse_bad_set"));
    ggml_backend_t backend = ggml_backend_dev_init(f.dev, nullptr);
    Ctx c;
    ggml_tensor* x = ggml_new_tensor_1d(c.ctx, GGML_TYPE_F32, 64);
    ggml_tensor* y = ggml_add(c.ctx, x, x);
    ggml_tensor* elsewhere = ggml_new_tensor_1d(c.ctx, GGML_TYPE_F32, 64);
    ggml_backend_buffer_t buf = ggml_backend_alloc_ctx_tensors(c.ctx, backend);
    REQUIRE(buf != nullptr);
    ggml_cgraph* g = ggml_new_graph(c.ctx);
    ggml_build_forward_expand(g, y);
    std::vector<float> v = random_floats(64, 21), got(64, 0.f);
    ggml_backend_tensor_set(x, v.data(), 0, ggml_nbytes(x));
    REQUIRE(ggml_backend_graph_compute(backend, g) == GGML_STATUS_SUCCESS); // in the blob
    // x's bytes become untrusted; the graph changes (y's output moves), is encoded anew
    // and refused before anything is written.
    ggml_set_name(x, "bad-x");
    ggml_backend_tensor_set(x, v.data(), 0, ggml_nbytes(x));
    ggml_set_name(x, "");
    y->data = elsewhere->data;
    CHECK(ggml_backend_graph_compute(backend, g) == GGML_STATUS_FAILED);
    // Written again, the same changed graph computes: the host gets its bytes, not the
    // last ones the blob held (which would write the old place of y).
    ggml_backend_tensor_set(x, v.data(), 0, ggml_nbytes(x));
    REQUIRE(ggml_backend_graph_compute(backend, g) == GGML_STATUS_SUCCESS);
    ggml_backend_tensor_get(y, got.data(), 0, ggml_nbytes(y));
    for (size_t i = 0; i < got.size(); ++i)
        CHECK(got[i] == v[i] + v[i]);
    ggml_backend_buffer_free(buf);
    ggml_backend_free(backend);
}
