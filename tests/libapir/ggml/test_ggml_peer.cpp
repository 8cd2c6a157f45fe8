// Interop with ggml's real host backend (libggml-virtgpu-backend.so.0 driving ggml's CPU
// backend) in $APIR_GGML_PEER_DIR, over loopback: every one of the 23 commands is called
// and its result checked; graphs compute ADD and MUL_MAT (f32 and f16) and the results are
// compared with values computed here. Skips (77) when the peer is not there.
// APIR_GGML_PEER_TRANSPORT=vtest runs the same tests against ggml's host backend loaded by
// virglrenderer's APIR host (virgl_test_server from $APIR_VIRGL_PEER_DIR,
// tests/libapir/transport/vtest).
//
// ggml's host aborts its process on an rpc tensor outside its buffer and follows unknown
// buffer-type handles: nothing here sends either (the hostile cases run against the
// project's test backend in test_ggml.cpp).
#define CATCH_CONFIG_RUNNER
#include "catch.hpp"

#include <apir/ggml/client.hpp>
#include <apir/loopback.hpp>
#include <apir/vtest.hpp>

#include "libapir/transport/vtest/vtest_server.hpp"
#if APIR_HAVE_GGML_HEADERS
#include <apir/ggml/ggml_tensor.hpp>
#endif

#include <fmt/format.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <random>
#include <thread>
#include <vector>

namespace ag = apir::ggml;
namespace fs = std::filesystem;
using apir::Errc;
using Session = apir::Session<apir::AnyTransport>;
using Device = ag::Device<apir::AnyTransport>;

namespace {

fs::path g_lib;       // $APIR_GGML_PEER_DIR/lib
bool g_vtest = false; // APIR_GGML_PEER_TRANSPORT=vtest

// ggml's host backend keeps its state in globals: one session for the whole program. It
// is never destroyed: ggml's host calls a host-pointer buffer's free function, which
// ggml's CPU backend leaves null, when the buffer is freed and again in
// apir_backend_deinit, so a session that made one cannot end without a crash of the host.
struct Peer {
    std::unique_ptr<Session> session;
    std::unique_ptr<Device> dev;
    ag::BufferTypeHandle buft;
};

Peer& peer() {
    static Peer& p = *new Peer([] {
        apir::LoopbackOptions lo;
        lo.host.config["apir.load_library.path"] =
            (g_lib / "libggml-virtgpu-backend.so.0").string();
        lo.host.config["ggml.library.path"] = (g_lib / "libggml-cpu.so.0").string();
        lo.host.config["ggml.library.reg"] = "ggml_backend_cpu_reg";
        Peer r;
        if (g_vtest) {
            // Killed with its process group at exit: the host never has to end cleanly.
            static apir_test::VtestServer server(lo.host.config);
            apir::VtestOptions vo;
            vo.socket_path = server.socket_path();
            auto t = apir::VtestTransport::open(std::move(vo));
            if (!t) {
                fmt::print(stderr, "vtest: {}\n", t.error());
                std::exit(1);
            }
            r.session = std::make_unique<Session>(apir::AnyTransport(std::move(*t)));
        } else {
            r.session = std::make_unique<Session>(apir::LoopbackTransport(std::move(lo)));
        }
        auto c = r.session->connect();
        if (!c) {
            fmt::print(stderr, "connect to ggml's host backend: {}\n", c.error());
            std::exit(1);
        }
        r.dev = std::make_unique<Device>(*r.session);
        auto t = r.dev->buffer_type();
        if (!t) {
            fmt::print(stderr, "device_get_buffer_type: {}\n", t.error());
            std::exit(1);
        }
        r.buft = *t;
        return r;
    }());
    return p;
}

uint64_t calls(ag::Command c) {
    for (const auto& s : peer().session->stats())
        if (s.type == apir::CommandType::forward && s.id == static_cast<uint32_t>(c))
            return s.calls;
    return 0;
}

// IEEE half from float, round to nearest even (normal and zero values: all the test uses).
uint16_t to_half(float f) {
    uint32_t x;
    std::memcpy(&x, &f, 4);
    const uint32_t sign = (x >> 16) & 0x8000;
    const int32_t exp = static_cast<int32_t>((x >> 23) & 0xff) - 127 + 15;
    uint32_t mant = x & 0x7fffff;
    if (exp <= 0) return static_cast<uint16_t>(sign);
    uint32_t h = sign | (static_cast<uint32_t>(exp) << 10) | (mant >> 13);
    const uint32_t rest = mant & 0x1fff;
    if (rest > 0x1000 || (rest == 0x1000 && (h & 1))) ++h;
    return static_cast<uint16_t>(h);
}
float from_half(uint16_t h) {
    const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
    const uint32_t exp = (h >> 10) & 0x1f;
    const uint32_t mant = h & 0x3ff;
    uint32_t x = sign;
    if (exp != 0) x |= ((exp - 15 + 127) << 23) | (mant << 13);
    float f;
    std::memcpy(&f, &x, 4);
    return f;
}

std::vector<float> random_floats(size_t n, uint32_t seed) {
    std::mt19937 rng(seed);
    std::uniform_real_distribution<float> d(-2.0f, 2.0f);
    std::vector<float> v(n);
    for (float& x : v)
        x = d(rng);
    return v;
}

template <class T>
std::span<const std::byte> bytes_of(const std::vector<T>& v) {
    return std::as_bytes(std::span(v));
}
template <class T>
std::span<std::byte> bytes_of(std::vector<T>& v) {
    return std::as_writable_bytes(std::span(v));
}

} // namespace

TEST_CASE("ggml peer: device commands (0-5, 7, 8)") {
    Device& d = *peer().dev;
    CHECK(d.device_count().value() == 1); // 0: the CPU backend has one device
    CHECK(d.count().value() == 1);        // 1
    CHECK(d.name().value() == "CPU");     // 2
    auto desc = d.description();          // 3: the CPU's model name
    REQUIRE(desc);
    CHECK_FALSE(desc->empty());
    CHECK(d.type().value() == ag::DeviceType::cpu); // 4
    auto mem = d.memory();                          // 5
    REQUIRE(mem);
    CHECK(mem->total > 0);
    CHECK(mem->free <= mem->total);
    CHECK(d.buffer_type().value() == peer().buft); // 7: the same handle every time
    auto p = d.props();                            // 8: ggml's CPU device caps
    REQUIRE(p);
    CHECK_FALSE(p->async);
    CHECK_FALSE(p->host_buffer);
    CHECK(p->buffer_from_host_ptr);
    CHECK_FALSE(p->events);
    CHECK(p->mmap_support);
}

TEST_CASE("ggml peer: buffer-type commands (10-14)") {
    Device& d = *peer().dev;
    const auto t = peer().buft;
    CHECK(d.buffer_type_name(t).value() == "CPU"); // 10
    CHECK(d.alignment(t).value() == 32);           // 11: ggml's TENSOR_ALIGNMENT
    CHECK(d.max_size(t).value() == UINT64_MAX);    // 12: no limit
    CHECK(d.is_host(t).value() == false);          // 13: deprecated, always false
    auto b = d.alloc_buffer(t, 1 << 20);           // 14
    REQUIRE(b);
    CHECK(b->size == 1 << 20);
    auto base = d.base(b->handle);
    REQUIRE(base);
    CHECK(*base % 32 == 0);
    REQUIRE(d.free_buffer(b->handle));
}

TEST_CASE("ggml peer: buffer commands (16-21) and device_buffer_from_ptr (9)") {
    Device& d = *peer().dev;
    auto b = d.alloc_buffer(peer().buft, 4096);
    REQUIRE(b);
    auto base = d.base(b->handle); // 16
    REQUIRE(base);
    CHECK(*base != 0);

    auto a = ag::make_tensor(ag::Type::f32, {64}).place(b->handle, 0);
    auto c = ag::make_tensor(ag::Type::f32, {64}).place(b->handle, 256);
    auto x = random_floats(64, 1);
    REQUIRE(d.set_tensor(a, bytes_of(x))); // 17
    std::vector<float> back(64);
    REQUIRE(d.get_tensor(a, bytes_of(back))); // 18
    CHECK(back == x);
    // part of a tensor, at an offset
    std::vector<float> part(10);
    REQUIRE(d.get_tensor(a, bytes_of(part), 5 * 4));
    CHECK(std::equal(part.begin(), part.end(), x.begin() + 5));
    CHECK(d.copy_tensor(a, c).value() == true); // 19
    REQUIRE(d.get_tensor(c, bytes_of(back)));
    CHECK(back == x);
    REQUIRE(d.clear(b->handle, 0x3f)); // 20: every byte 0x3f
    std::vector<uint8_t> raw(4096);
    auto whole = ag::make_tensor(ag::Type::i8, {4096}).place(b->handle, 0);
    REQUIRE(d.get_tensor(whole, bytes_of(raw)));
    CHECK(std::all_of(raw.begin(), raw.end(), [](uint8_t v) { return v == 0x3f; }));
    REQUIRE(d.free_buffer(b->handle)); // 21

    // 9: a buffer in our shared memory, wrapped by the host without copying
    auto hp = d.buffer_from_ptr(1 << 16, 1 << 16);
    REQUIRE(hp);
    CHECK(d.buffer_type_name(hp->buffer.type).value() == "CPU_Mapped");
    CHECK(d.base(hp->buffer.handle).value() != 0);
    auto t = ag::make_tensor(ag::Type::f32, {64}).place(hp->buffer.handle, 1024);
    REQUIRE(d.set_tensor(t, bytes_of(x)));
    CHECK(std::memcmp(hp->bytes.data() + 1024, x.data(), 256) == 0); // landed in our blob
    std::fill_n(reinterpret_cast<float*>(hp->bytes.data() + 1024), 64, 7.0f);
    REQUIRE(d.get_tensor(t, bytes_of(back)));
    CHECK(back == std::vector<float>(64, 7.0f));
    // Not freed: ggml's host would call the null free function of its CPU_Mapped buffer.
}

TEST_CASE("ggml peer: large transfers in chunks (64 MiB through a 24 MiB staging blob)") {
    Device& d = *peer().dev;
    const uint32_t n = 16u << 20; // floats: 64 MiB
    auto b = d.alloc_buffer(peer().buft, uint64_t{n} * 4);
    REQUIRE(b);
    auto t = ag::make_tensor(ag::Type::f32, {n}).place(b->handle, 0);
    std::vector<float> x(n);
    for (uint32_t i = 0; i < n; ++i)
        x[i] = static_cast<float>(i % 100003);
    const uint64_t sets = calls(ag::Command::buffer_set_tensor);
    REQUIRE(d.set_tensor(t, bytes_of(x)));
    CHECK(calls(ag::Command::buffer_set_tensor) - sets == 3); // 24 + 24 + 16 MiB
    std::vector<float> back(n);
    REQUIRE(d.get_tensor(t, bytes_of(back)));
    CHECK(back == x);
    REQUIRE(d.free_buffer(b->handle));
}

TEST_CASE("ggml peer: graph compute (22) of ADD and MUL_MAT, f32 and f16") {
    Device& d = *peer().dev;
    constexpr uint32_t K = 64, M = 48, N = 8;
    auto b = d.alloc_buffer(peer().buft, 1 << 20);
    REQUIRE(b);
    uint64_t off = 0;
    auto place = [&](ag::RpcTensor t) {
        t.place(b->handle, off);
        off += (ag::nbytes(t).value() + 31) & ~uint64_t{31};
        return t;
    };

    SECTION("ADD of two f32 vectors") {
        const uint32_t n = 1000;
        auto a = place(ag::make_tensor(ag::Type::f32, {n}));
        auto c = place(ag::make_tensor(ag::Type::f32, {n}));
        auto s = place(ag::make_tensor(ag::Type::f32, {n}));
        auto x = random_floats(n, 2), y = random_floats(n, 3);
        REQUIRE(d.set_tensor(a, bytes_of(x)));
        REQUIRE(d.set_tensor(c, bytes_of(y)));
        ag::Graph g;
        g.add_node(s, ag::Op::add, {g.add(a), g.add(c)});
        REQUIRE(d.graph_compute(g));
        std::vector<float> out(n);
        REQUIRE(d.get_tensor(s, bytes_of(out)));
        for (uint32_t i = 0; i < n; ++i)
            REQUIRE(out[i] == x[i] + y[i]);
    }

    // out[n][m] = sum_k w[m][k] * v[n][k]: w is [K, M], v is [K, N], out is [M, N].
    auto reference = [&](const std::vector<float>& w, const std::vector<float>& v) {
        std::vector<float> r(M * N);
        for (uint32_t j = 0; j < N; ++j)
            for (uint32_t i = 0; i < M; ++i) {
                double s = 0;
                for (uint32_t k = 0; k < K; ++k)
                    s += double{w[i * K + k]} * double{v[j * K + k]};
                r[j * M + i] = static_cast<float>(s);
            }
        return r;
    };

    SECTION("MUL_MAT of f32 matrices, then ADD of its result: two nodes") {
        auto w = place(ag::make_tensor(ag::Type::f32, {K, M}));
        auto v = place(ag::make_tensor(ag::Type::f32, {K, N}));
        auto bias = place(ag::make_tensor(ag::Type::f32, {M, N}));
        auto prod = place(ag::make_tensor(ag::Type::f32, {M, N}));
        auto out = place(ag::make_tensor(ag::Type::f32, {M, N}));
        auto wv = random_floats(K * M, 4), vv = random_floats(K * N, 5),
             bv = random_floats(M * N, 6);
        REQUIRE(d.set_tensor(w, bytes_of(wv)));
        REQUIRE(d.set_tensor(v, bytes_of(vv)));
        REQUIRE(d.set_tensor(bias, bytes_of(bv)));
        ag::Graph g;
        uint64_t ip = g.add_node(prod, ag::Op::mul_mat, {g.add(w), g.add(v)});
        g.add_node(out, ag::Op::add, {ip, g.add(bias)});
        REQUIRE(d.graph_compute(g));
        std::vector<float> got(M * N);
        REQUIRE(d.get_tensor(out, bytes_of(got)));
        auto ref = reference(wv, vv);
        for (size_t i = 0; i < got.size(); ++i)
            REQUIRE(std::fabs(got[i] - (ref[i] + bv[i])) <= 1e-4f * (1 + std::fabs(ref[i])));
    }

    SECTION("MUL_MAT of f16 weights by f32 activations") {
        auto w = place(ag::make_tensor(ag::Type::f16, {K, M}));
        auto v = place(ag::make_tensor(ag::Type::f32, {K, N}));
        auto prod = place(ag::make_tensor(ag::Type::f32, {M, N}));
        auto wf = random_floats(K * M, 7), vv = random_floats(K * N, 8);
        std::vector<uint16_t> wh(wf.size());
        for (size_t i = 0; i < wf.size(); ++i) {
            wh[i] = to_half(wf[i]);
            wf[i] = from_half(wh[i]); // the values the host sees
        }
        // ggml's CPU backend converts the f32 side to f16 for the dot products.
        std::vector<float> vh(vv.size());
        for (size_t i = 0; i < vv.size(); ++i)
            vh[i] = from_half(to_half(vv[i]));
        REQUIRE(d.set_tensor(w, bytes_of(wh)));
        REQUIRE(d.set_tensor(v, bytes_of(vv)));
        ag::Graph g;
        g.add_node(prod, ag::Op::mul_mat, {g.add(w), g.add(v)});
        REQUIRE(d.graph_compute(g));
        std::vector<float> got(M * N);
        REQUIRE(d.get_tensor(prod, bytes_of(got)));
        auto ref = reference(wf, vh);
        for (size_t i = 0; i < got.size(); ++i)
            REQUIRE(std::fabs(got[i] - ref[i]) <= 1e-2f * (1 + std::fabs(ref[i])));
    }
    REQUIRE(d.free_buffer(b->handle));
}

TEST_CASE("ggml peer: what the host refuses comes back as named errors") {
    Device& d = *peer().dev;
    Session& s = *peer().session;
    auto b = d.alloc_buffer(peer().buft, 64);
    REQUIRE(b);
    const ag::BufferHandle freed = b->handle;
    REQUIRE(d.free_buffer(freed));
    // The Device no longer sends it ...
    CHECK(d.base(freed).error() == Errc::ggml_unknown_handle);
    // ... and ggml's host, which tracks its buffers, refuses it when sent raw.
    auto raw = s.call<ag::BufferGetBase>(ag::BufferRequest{freed});
    REQUIRE_FALSE(raw);
    CHECK(raw.error() == Errc::forward_backend_error);
    CHECK(raw.error().wire_code() == 5);
    // A graph in a blob that does not exist, and a command id past ggml's table.
    // virglrenderer's host (vtest) answers an unknown blob by marking the context fatal
    // and closing the connection, so only the loopback host is asked that.
    if (!g_vtest) {
        auto zero = s.call<ag::BackendGraphCompute>(ag::GraphComputeRequest{0, 0});
        CHECK(zero.error() == Errc::forward_backend_error);
    }
    auto past = s.call<apir::Forward<ag::command_count, apir::Empty>>(apir::Empty{});
    CHECK(past.error() == Errc::forward_invalid_index);
}

#if APIR_HAVE_GGML_HEADERS
TEST_CASE("ggml peer: device_supports_op (6) and buffer_type_get_alloc_size (15)") {
    Device& d = *peer().dev;
    // ggml tensors described by hand (nothing here links ggml).
    auto tensor = [](ggml_type type, int64_t ne0, int64_t ne1, size_t type_size) {
        ggml_tensor t{};
        t.type = type;
        t.ne[0] = ne0;
        t.ne[1] = ne1;
        t.ne[2] = t.ne[3] = 1;
        t.nb[0] = type_size;
        t.nb[1] = type_size * static_cast<size_t>(ne0);
        t.nb[2] = t.nb[3] = t.nb[1] * static_cast<size_t>(ne1);
        return t;
    };
    ggml_tensor w = tensor(GGML_TYPE_F16, 64, 48, 2), v = tensor(GGML_TYPE_F32, 64, 8, 4);
    ggml_tensor mm = tensor(GGML_TYPE_F32, 48, 8, 4);
    mm.op = GGML_OP_MUL_MAT;
    mm.src[0] = &w;
    mm.src[1] = &v;
    CHECK(ag::supports_op(d, &mm).value() == true);
    ggml_tensor add = tensor(GGML_TYPE_F32, 64, 8, 4);
    add.op = GGML_OP_ADD;
    add.src[0] = &v;
    add.src[1] = &v;
    CHECK(ag::supports_op(d, &add).value() == true);
    // ggml's CPU backend has no CPY into IQ3_XXS (no from_float for it).
    ggml_tensor cpy = tensor(GGML_TYPE_IQ3_XXS, 256, 1, 98);
    cpy.op = GGML_OP_CPY;
    cpy.src[0] = &v;
    CHECK(ag::supports_op(d, &cpy).value() == false);

    // The CPU buffer type has no get_alloc_size: ggml_nbytes.
    CHECK(ag::get_alloc_size(d, peer().buft, &v).value() == 64 * 8 * 4);
    CHECK(ag::get_alloc_size(d, peer().buft, &w).value() == 64 * 48 * 2);
    CHECK(calls(ag::Command::device_supports_op) >= 3);
    CHECK(calls(ag::Command::buffer_type_get_alloc_size) >= 2);
}
#endif

TEST_CASE("ggml peer: every one of the 23 commands was called (runs last)") {
    std::vector<std::string_view> missing;
    for (uint32_t i = 0; i < ag::command_count; ++i)
        if (calls(static_cast<ag::Command>(i)) == 0) missing.push_back(ag::command_name(i));
#if !APIR_HAVE_GGML_HEADERS
    // Without ggml's headers the two raw-tensor commands cannot be built.
    std::erase(missing, "device_supports_op");
    std::erase(missing, "buffer_type_get_alloc_size");
    WARN("built without ggml's headers: device_supports_op and buffer_type_get_alloc_size not run");
#endif
    INFO("never called: " << fmt::format("{}", fmt::join(missing, ", ")));
    CHECK(missing.empty());
}

int main(int argc, char** argv) {
    const char* dir = std::getenv("APIR_GGML_PEER_DIR");
    if (!dir || !*dir) {
        fmt::print("skip: APIR_GGML_PEER_DIR is not set (a ggml build with "
                   "lib/libggml-virtgpu-backend.so.0 and lib/libggml-cpu.so.0)\n");
        return 77;
    }
    g_lib = fs::path(dir) / "lib";
    if (const char* tr = std::getenv("APIR_GGML_PEER_TRANSPORT"); tr && *tr) {
        g_vtest = std::string_view(tr) == "vtest";
        if (!g_vtest && std::string_view(tr) != "loopback") {
            fmt::print(stderr, "APIR_GGML_PEER_TRANSPORT={}: loopback or vtest\n", tr);
            return 1;
        }
        if (auto why = apir_test::VtestServer::unavailable(); g_vtest && why) {
            fmt::print("skip: {}\n", *why);
            return 77;
        }
    }
    for (const char* f : {"libggml-virtgpu-backend.so.0", "libggml-cpu.so.0"})
        if (!fs::exists(g_lib / f)) {
            fmt::print("skip: {} not found\n", (g_lib / f).string());
            return 77;
        }
    return Catch::Session().run(argc, argv);
}
