// The ggml layer over loopback: wire layouts (rpc tensor, graph, typed calls), and the
// Device client against the project's ggml test backend, hostile replies included.
#include "catch.hpp"

#include <apir/ggml/client.hpp>
#include <apir/loopback.hpp>
#if APIR_HAVE_GGML_HEADERS
#include <apir/ggml/ggml_tensor.hpp>
#endif

#include <atomic>
#include <memory>
#include <numeric>
#include <thread>
#include <vector>

using namespace std::chrono_literals;
namespace ag = apir::ggml;
using apir::Errc;
using Session = apir::Session<apir::LoopbackTransport>;
using Device = ag::Device<apir::LoopbackTransport>;

namespace {

// A session with the test backend (hostile: its ggml.test.hostile mode) and a Device.
struct Fixture {
    std::unique_ptr<Session> session;
    std::unique_ptr<Device> dev;

    explicit Fixture(std::string hostile = {}, ag::DeviceOptions options = {}) {
        apir::LoopbackOptions lo;
        lo.host.config["apir.load_library.path"] = APIR_GGML_TEST_BACKEND;
        if (!hostile.empty()) lo.host.config["ggml.test.hostile"] = hostile;
        lo.host.logger = apir::Logger(nullptr);
        apir::SessionOptions so;
        so.logger = apir::Logger(nullptr);
        session = std::make_unique<Session>(apir::LoopbackTransport(std::move(lo)), so);
        auto c = session->connect();
        REQUIRE(c);
        dev = std::make_unique<Device>(*session, options);
    }
    uint64_t calls(ag::Command c) const {
        for (const auto& s : session->stats())
            if (s.type == apir::CommandType::forward && s.id == static_cast<uint32_t>(c))
                return s.calls;
        return 0;
    }
    ag::Buffer buffer(uint64_t size) {
        auto t = dev->buffer_type();
        REQUIRE(t);
        auto b = dev->alloc_buffer(*t, size);
        REQUIRE(b);
        return *b;
    }
};

template <class T>
void check_error(const apir::Expected<T>& r, Errc code, std::string_view command) {
    REQUIRE_FALSE(r);
    CHECK(r.error().name() == apir::error_info(code).name);
    CHECK(r.error().detail().find(command) != std::string::npos);
}

template <class T>
T read_at(std::span<const std::byte> b, size_t off) {
    T v;
    std::memcpy(&v, b.data() + off, sizeof v);
    return v;
}

std::vector<float> iota_floats(size_t n, float start) {
    std::vector<float> v(n);
    std::iota(v.begin(), v.end(), start);
    return v;
}

} // namespace

// ---------------------------------------------------------------------------
// Wire layouts

TEST_CASE("an rpc tensor travels as ggml's 304 raw bytes, every field at its offset") {
    ag::RpcTensor t = ag::make_tensor(ag::Type::f16, {8, 2});
    t.id = 0x1122334455667788;
    t.op = static_cast<uint32_t>(ag::Op::mul_mat);
    t.op_params[0] = -5;
    t.op_params[15] = 77;
    t.flags = ag::flag_compute | ag::flag_output;
    t.src[0] = 11;
    t.src[9] = 99;
    t.view_src = 12;
    t.view_offs = 128;
    t.data = 4096;
    t.set_name("weights");

    std::array<std::byte, 400> buf{};
    auto n = apir::encode(buf, t);
    REQUIRE(n);
    REQUIRE(*n == 304);
    std::span<const std::byte> b(buf.data(), 304);
    CHECK(read_at<uint64_t>(b, 0) == 0x1122334455667788);
    CHECK(read_at<uint32_t>(b, 8) == 1);  // F16
    CHECK(read_at<uint32_t>(b, 12) == 0); // padding
    CHECK(read_at<uint64_t>(b, 16) == 0); // no buffer
    CHECK(read_at<uint32_t>(b, 24) == 8);
    CHECK(read_at<uint32_t>(b, 28) == 2);
    CHECK(read_at<uint32_t>(b, 32) == 1);
    CHECK(read_at<uint32_t>(b, 40) == 2);  // nb[0]: f16
    CHECK(read_at<uint32_t>(b, 44) == 16); // nb[1]
    CHECK(read_at<uint32_t>(b, 48) == 32);
    CHECK(read_at<uint32_t>(b, 52) == 32);
    CHECK(read_at<uint32_t>(b, 56) == 29); // GGML_OP_MUL_MAT
    CHECK(read_at<int32_t>(b, 60) == -5);
    CHECK(read_at<int32_t>(b, 120) == 77);
    CHECK(read_at<int32_t>(b, 124) == 18);
    CHECK(read_at<uint64_t>(b, 128) == 11);
    CHECK(read_at<uint64_t>(b, 200) == 99);
    CHECK(read_at<uint64_t>(b, 208) == 12);
    CHECK(read_at<uint64_t>(b, 216) == 128);
    CHECK(read_at<uint64_t>(b, 224) == 4096);
    CHECK(std::memcmp(b.data() + 232, "weights\0", 8) == 0);
    CHECK(read_at<uint64_t>(b, 296) == 0);

    auto back = apir::decode_exact<ag::RpcTensor>(b);
    REQUIRE(back);
    CHECK(std::memcmp(&*back, &t, sizeof t) == 0);
    CHECK_FALSE(apir::decode_exact<ag::RpcTensor>(b.first(300)));
}

TEST_CASE("make_tensor and nbytes compute strides and sizes as ggml does") {
    auto f = ag::make_tensor(ag::Type::f32, {4, 3});
    CHECK(f.ne == std::array<uint32_t, 4>{4, 3, 1, 1});
    CHECK(f.nb == std::array<uint32_t, 4>{4, 16, 48, 48});
    CHECK(ag::nbytes(f).value() == 48);

    auto q = ag::make_tensor(ag::Type::q8_0, {64, 2}); // 34-byte blocks of 32
    CHECK(q.nb[0] == 34);
    CHECK(q.nb[1] == 68);
    CHECK(ag::nbytes(q).value() == 136);

    auto empty = ag::make_tensor(ag::Type::f32, {0, 3});
    CHECK(ag::nbytes(empty).value() == 0);

    ag::RpcTensor unknown = f;
    unknown.type = 4; // a removed ggml type
    CHECK(ag::nbytes(unknown).error() == Errc::invalid_argument);

    ag::RpcTensor huge = ag::make_tensor(ag::Type::f32, {1, 1, 1, 1});
    huge.ne = {UINT32_MAX, UINT32_MAX, UINT32_MAX, UINT32_MAX};
    huge.nb = {UINT32_MAX, UINT32_MAX, UINT32_MAX, UINT32_MAX};
    CHECK(ag::nbytes(huge).error() == Errc::invalid_argument);
}

TEST_CASE("ggml_status has names; only ggml's four values are accepted") {
    CHECK(ag::status_name(ag::Status::aborted) == "GGML_STATUS_ABORTED");
    CHECK(ag::status_name(ag::Status::alloc_failed) == "GGML_STATUS_ALLOC_FAILED");
    for (int32_t v : {-2, -1, 0, 1})
        CHECK(ag::to_status(v).value() == static_cast<ag::Status>(v));
    for (int32_t v : {-3, 2, 7, INT32_MIN})
        CHECK(ag::to_status(v).error() == Errc::decode_bad_value);
    CHECK(ag::check_status(ag::Status::success));
    CHECK(ag::check_status(ag::Status::failed).error() == Errc::ggml_status_failed);
    CHECK(ag::check_status(ag::Status::aborted).error() == Errc::ggml_status_aborted);
    CHECK(ag::check_status(ag::Status::alloc_failed).error() == Errc::ggml_status_alloc_failed);
}

TEST_CASE("commands carry ggml's ids and names") {
    CHECK(ag::command_name(0) == "device_get_device_count");
    CHECK(ag::command_name(ag::BufferSetTensor::flags) == "buffer_set_tensor");
    CHECK(ag::BufferSetTensor::flags == 17);
    CHECK(ag::BackendGraphCompute::flags == 22);
    CHECK(ag::command_name(22) == "backend_graph_compute");
    CHECK(ag::command_name(23) == "unknown");
    for (uint32_t i = 0; i < ag::command_count; ++i)
        CHECK(ag::command_name(i) != "unknown");
}

TEST_CASE("typed requests have ggml's byte layout") {
    std::array<std::byte, 1024> buf{};
    ag::TensorTransferRequest req;
    req.res_id = 7;
    req.offset = 16;
    req.size = 32;
    req.tensor.id = 5;
    apir::Encoder e(buf);
    apir::encode_command<ag::BufferSetTensor>(e, 0, 3, req);
    REQUIRE(e.ok());
    // header 12, handle 8, rpc tensor 304, res 4, offset 8, size 8
    CHECK(e.size() == 12 + 8 + 304 + 4 + 8 + 8);
    auto b = e.written();
    CHECK(read_at<uint32_t>(b, 0) == 2);  // FORWARD
    CHECK(read_at<uint32_t>(b, 4) == 17); // buffer_set_tensor
    CHECK(read_at<uint64_t>(b, 20) == 5); // the tensor's id
    CHECK(read_at<uint32_t>(b, 12 + 8 + 304) == 7);
    CHECK(read_at<uint64_t>(b, 12 + 8 + 304 + 4) == 16);
    CHECK(read_at<uint64_t>(b, 12 + 8 + 304 + 12) == 32);

    apir::Encoder c(buf);
    c.put(ag::ClearRequest{{}, 0xab});
    CHECK(c.size() == 12); // handle, then the uint8 in 4 bytes
    CHECK(read_at<uint32_t>(c.written(), 8) == 0xab);
}

TEST_CASE("a graph is packed in ggml's layout and validated before it is sent") {
    ag::Graph g;
    uint64_t a = g.add(ag::make_tensor(ag::Type::f32, {4}));
    uint64_t b = g.add(ag::make_tensor(ag::Type::f32, {4}));
    uint64_t c = g.add_node(ag::make_tensor(ag::Type::f32, {4}), ag::Op::add, {a, b});
    CHECK(a == 1);
    CHECK(b == 2);
    CHECK(c == 3);
    REQUIRE(g.encoded_size() == 4 + 8 + 4 + 3 * 304);

    std::vector<std::byte> out(g.encoded_size());
    auto n = g.encode(out);
    REQUIRE(n);
    CHECK(*n == out.size());
    CHECK(read_at<uint32_t>(out, 0) == 1);  // n_nodes
    CHECK(read_at<uint64_t>(out, 4) == 3);  // node ids
    CHECK(read_at<uint32_t>(out, 12) == 3); // n_tensors
    CHECK(read_at<uint64_t>(out, 16) == 1); // first tensor's id, no padding before it
    const size_t node = 16 + 2 * 304;
    CHECK(read_at<uint32_t>(out, node + 56) == 2); // GGML_OP_ADD
    CHECK(read_at<int32_t>(out, node + 124) == ag::flag_compute);
    CHECK(read_at<uint64_t>(out, node + 128) == 1);
    CHECK(read_at<uint64_t>(out, node + 136) == 2);

    auto back = ag::decode_graph(out);
    REQUIRE(back);
    CHECK(back->nodes == std::vector<uint64_t>{3});
    REQUIRE(back->tensors.size() == 3);
    CHECK(back->tensors[2].src[1] == 2);

    SECTION("too small an output buffer") {
        std::vector<std::byte> small(out.size() - 1);
        CHECK(g.encode(small).error() == Errc::encode_overflow);
    }
    SECTION("truncated or lying input") {
        CHECK_FALSE(ag::decode_graph(std::span(out).first(out.size() - 4)));
        auto lie = out;
        uint32_t big = 1000;
        std::memcpy(lie.data() + 12, &big, 4);
        CHECK(ag::decode_graph(lie).error() == Errc::decode_size_too_large);
        std::memcpy(lie.data(), &big, 4);
        CHECK(ag::decode_graph(lie).error() == Errc::decode_size_too_large);
    }
    SECTION("invalid graphs are refused") {
        auto t = std::vector<ag::RpcTensor>(g.tensors().begin(), g.tensors().end());
        const std::vector<uint64_t> nodes{3};
        CHECK(ag::validate_graph({}, t).error() == Errc::invalid_argument); // no node
        CHECK(ag::validate_graph(std::vector<uint64_t>{9}, t).error() == Errc::invalid_argument);
        auto missing_src = t;
        missing_src[2].src[1] = 42;
        CHECK(ag::validate_graph(nodes, missing_src).error() == Errc::invalid_argument);
        auto missing_view = t;
        missing_view[2].view_src = 42;
        CHECK(ag::validate_graph(nodes, missing_view).error() == Errc::invalid_argument);
        auto dup = t;
        dup[1].id = 1;
        CHECK(ag::validate_graph(nodes, dup).error() == Errc::invalid_argument);
        auto zero = t;
        zero[0].id = 0;
        CHECK(ag::validate_graph(nodes, zero).error() == Errc::invalid_argument);
    }
}

// ---------------------------------------------------------------------------
// The Device against the test backend

TEST_CASE("Device: every command of the test backend, results checked") {
    Fixture f;
    Device& d = *f.dev;
    CHECK(d.device_count().value() == 1);
    CHECK(d.count().value() == 1);
    CHECK(d.name().value() == "apir-test");
    CHECK(d.description().value() == "apir test ggml device");
    CHECK(d.type().value() == ag::DeviceType::cpu);
    auto mem = d.memory();
    REQUIRE(mem);
    CHECK(mem->free == uint64_t{1} << 30);
    CHECK(mem->total == uint64_t{2} << 30);
    auto props = d.props();
    REQUIRE(props);
    CHECK(props->buffer_from_host_ptr);
    CHECK_FALSE(props->async);

    auto buft = d.buffer_type();
    REQUIRE(buft);
    CHECK(d.buffer_type_name(*buft).value() == "TEST");
    CHECK(d.alignment(*buft).value() == 32);
    CHECK(d.max_size(*buft).value() == UINT64_MAX);
    CHECK(d.is_host(*buft).value() == false);

    auto buf = d.alloc_buffer(*buft, 4096);
    REQUIRE(buf);
    CHECK(buf->size == 4096);
    CHECK(buf->type == *buft);
    CHECK(d.base(buf->handle).value() != 0);

    // set, get, clear, copy
    auto a = ag::make_tensor(ag::Type::f32, {16}).place(buf->handle, 0);
    auto b = ag::make_tensor(ag::Type::f32, {16}).place(buf->handle, 64);
    auto x = iota_floats(16, 1.0f);
    REQUIRE(d.set_tensor(a, std::as_bytes(std::span(x))));
    std::vector<float> back(16);
    REQUIRE(d.get_tensor(a, std::as_writable_bytes(std::span(back))));
    CHECK(back == x);
    REQUIRE(d.get_tensor(a, std::as_writable_bytes(std::span(back).subspan(4, 4)), 4 * 4));
    CHECK(back == x);
    CHECK(d.copy_tensor(a, b).value() == true);
    REQUIRE(d.get_tensor(b, std::as_writable_bytes(std::span(back))));
    CHECK(back == x);
    REQUIRE(d.clear(buf->handle, 0));
    REQUIRE(d.get_tensor(b, std::as_writable_bytes(std::span(back))));
    CHECK(back == std::vector<float>(16, 0.0f));

    // host-pointer buffer: its bytes are the buffer, in place
    auto hp = d.buffer_from_ptr(256, 256);
    REQUIRE(hp);
    CHECK(hp->buffer.size == 256);
    CHECK(hp->bytes.size() == 256);
    CHECK(d.knows(hp->buffer.type));
    CHECK(d.buffer_type_name(hp->buffer.type).value() == "TEST_HOST_PTR");
    auto h = ag::make_tensor(ag::Type::f32, {16}).place(hp->buffer.handle, 0);
    REQUIRE(d.set_tensor(h, std::as_bytes(std::span(x))));
    CHECK(std::memcmp(hp->bytes.data(), x.data(), 64) == 0);
    std::fill_n(reinterpret_cast<float*>(hp->bytes.data()), 16, 2.5f);
    REQUIRE(d.get_tensor(h, std::as_writable_bytes(std::span(back))));
    CHECK(back == std::vector<float>(16, 2.5f));

    // graph: ADD, then MUL_MAT of its result
    auto y = iota_floats(16, -3.0f);
    REQUIRE(d.set_tensor(a, std::as_bytes(std::span(x))));
    REQUIRE(d.set_tensor(b, std::as_bytes(std::span(y))));
    ag::Graph g;
    uint64_t ia = g.add(a), ib = g.add(b);
    auto sum = ag::make_tensor(ag::Type::f32, {16}).place(buf->handle, 128);
    uint64_t is = g.add_node(sum, ag::Op::add, {ia, ib});
    // [4 x 4] x [4 x 1]: sum viewed as a 4x4 matrix times the first 4 values of a
    auto m = ag::make_tensor(ag::Type::f32, {4, 4}).place(buf->handle, 128);
    m.id = is; // the same tensor, reshaped: describe the MUL_MAT source directly
    ag::Graph g2;
    uint64_t im = g2.add(m);
    uint64_t iv = g2.add(ag::make_tensor(ag::Type::f32, {4, 1}).place(buf->handle, 0));
    auto prod = ag::make_tensor(ag::Type::f32, {4, 1}).place(buf->handle, 256);
    g2.add_node(prod, ag::Op::mul_mat, {im, iv});
    REQUIRE(d.graph_compute(g));
    REQUIRE(d.graph_compute(g2));
    std::vector<float> s(16), p(4);
    REQUIRE(d.get_tensor(sum, std::as_writable_bytes(std::span(s))));
    for (size_t i = 0; i < 16; ++i)
        CHECK(s[i] == x[i] + y[i]);
    REQUIRE(d.get_tensor(prod, std::as_writable_bytes(std::span(p))));
    for (size_t i = 0; i < 4; ++i) {
        float e = 0;
        for (size_t k = 0; k < 4; ++k)
            e += s[i * 4 + k] * x[k];
        CHECK(p[i] == e);
    }

    REQUIRE(d.free_buffer(buf->handle));
    REQUIRE(d.free_buffer(hp->buffer.handle));

    // stats() carries ggml's names
    bool named = false;
    for (const auto& st : d.stats())
        if (st.name == "buffer_set_tensor") named = st.stats.calls >= 4;
    CHECK(named);
}

TEST_CASE("Device: large transfers go in chunks through one reused staging blob") {
    ag::DeviceOptions o;
    o.chunk_size = 64 * 1024;
    Fixture f({}, o);
    const uint32_t n = 1u << 18; // 1 MiB of floats
    auto buf = f.buffer(n * 4);
    auto t = ag::make_tensor(ag::Type::f32, {n}).place(buf.handle, 0);
    auto x = iota_floats(n, 0.0f);
    REQUIRE(f.dev->set_tensor(t, std::as_bytes(std::span(x))));
    CHECK(f.calls(ag::Command::buffer_set_tensor) == 16);
    std::vector<float> back(n);
    REQUIRE(f.dev->get_tensor(t, std::as_writable_bytes(std::span(back))));
    CHECK(f.calls(ag::Command::buffer_get_tensor) == 16);
    CHECK(back == x);
    CHECK(f.session->staging_creates() == 1);
    // an odd size and offset: the last chunk is short
    std::vector<std::byte> part(100000);
    REQUIRE(f.dev->get_tensor(t, part, 12));
    CHECK(std::memcmp(part.data(), reinterpret_cast<const std::byte*>(x.data()) + 12,
                      part.size()) == 0);
}

TEST_CASE("Device: transfers from several threads do not mix") {
    ag::DeviceOptions o;
    o.chunk_size = 1000; // many chunks per transfer
    Fixture f({}, o);
    constexpr int threads = 4;
    constexpr uint32_t n = 2048;
    auto buf = f.buffer(threads * n * 4);
    std::atomic<int> bad{0};
    std::vector<std::thread> ts;
    for (int i = 0; i < threads; ++i)
        ts.emplace_back([&, i] {
            auto t = ag::make_tensor(ag::Type::f32, {n})
                         .place(buf.handle, static_cast<uint64_t>(i) * n * 4);
            std::vector<float> back(n);
            for (int round = 0; round < 20; ++round) {
                auto x = iota_floats(n, static_cast<float>(i * 100000 + round));
                if (!f.dev->set_tensor(t, std::as_bytes(std::span(x)))) ++bad;
                if (!f.dev->get_tensor(t, std::as_writable_bytes(std::span(back))) || back != x)
                    ++bad;
                if (!f.dev->name()) ++bad;
            }
        });
    for (auto& t : ts)
        t.join();
    CHECK(bad == 0);
}

TEST_CASE("Device: eight threads transferring at once never get wrong data reported as "
          "success") {
    ag::DeviceOptions o;
    o.chunk_size = 4096; // several chunks per transfer
    Fixture f({}, o);
    constexpr int threads = 8, rounds = 50;
    constexpr uint32_t n = 4096; // 16 KiB per transfer
    auto buf = f.buffer(threads * n * 4);
    std::atomic<int> wrong{0}, failed{0}, right{0};
    std::vector<std::thread> ts;
    for (int i = 0; i < threads; ++i)
        ts.emplace_back([&, i] {
            auto t = ag::make_tensor(ag::Type::f32, {n})
                         .place(buf.handle, static_cast<uint64_t>(i) * n * 4);
            std::vector<float> back(n);
            for (int round = 0; round < rounds; ++round) {
                auto x = iota_floats(n, static_cast<float>(i * 100000 + round));
                const bool set = f.dev->set_tensor(t, std::as_bytes(std::span(x))).has_value();
                std::fill(back.begin(), back.end(), -1.f);
                const bool got =
                    f.dev->get_tensor(t, std::as_writable_bytes(std::span(back))).has_value();
                if (set && got && back != x)
                    ++wrong; // success with wrong data: never
                else if (set && got)
                    ++right;
                else
                    ++failed; // a failed chunk is an error, never a silent success
            }
        });
    for (auto& t : ts)
        t.join();
    CHECK(wrong == 0);
    CHECK(right + failed == threads * rounds);
    // Transfers wait their turn for a staging blob (within their deadline): none fails
    // because other threads are busy. Needs the session's waiting staging pool.
    CHECK(failed == 0);
}

TEST_CASE("Device: graphs ggml's host cannot survive are refused, never sent") {
    Fixture f;
    auto buf = f.buffer(4096);
    auto place = [&](uint64_t off) {
        return ag::make_tensor(ag::Type::f32, {4}).place(buf.handle, off);
    };
    SECTION("an op id at or past GGML_OP_COUNT, or a custom op") {
        for (uint32_t op :
             {ag::op_count, ag::op_count + 100, uint32_t{0xffffffff},
              static_cast<uint32_t>(ag::Op::custom), static_cast<uint32_t>(ag::Op::map_custom2)}) {
            ag::Graph g;
            uint64_t a = g.add(place(0));
            g.add_node(place(16), static_cast<ag::Op>(op), {a, a});
            const uint64_t before = f.calls(ag::Command::backend_graph_compute);
            check_error(f.dev->graph_compute(g), Errc::invalid_argument, "backend_graph_compute");
            CHECK(f.calls(ag::Command::backend_graph_compute) == before);
        }
    }
    SECTION("a 300000-deep chain of sources left out of the node list") {
        constexpr uint32_t depth = 300000;
        std::vector<ag::RpcTensor> tensors;
        tensors.reserve(depth + 1);
        tensors.push_back(place(0));
        tensors.back().id = 1;
        for (uint64_t id = 2; id <= depth + 1; ++id) {
            auto t = place(16);
            t.id = id;
            t.op = static_cast<uint32_t>(ag::Op::add);
            t.src[0] = id - 1;
            t.src[1] = 1;
            tensors.push_back(t);
        }
        const std::vector<uint64_t> nodes{depth + 1}; // only the last
        CHECK(ag::validate_graph(nodes, tensors).error() == Errc::invalid_argument);
        const uint64_t before = f.calls(ag::Command::backend_graph_compute);
        check_error(f.dev->graph_compute(nodes, tensors), Errc::invalid_argument,
                    "backend_graph_compute");
        CHECK(f.calls(ag::Command::backend_graph_compute) == before);
        // The same chain with every link in the node list, in order: the host makes each
        // tensor from already made ones, and the graph is valid.
        std::vector<uint64_t> all;
        for (uint64_t id = 2; id <= depth + 1; ++id)
            all.push_back(id);
        CHECK(ag::validate_graph(all, tensors));
        // A chain at the bound passes; one more link does not.
        std::vector<ag::RpcTensor> at_bound(tensors.begin(), tensors.begin() + ag::max_graph_depth);
        CHECK(ag::validate_graph(std::vector<uint64_t>{ag::max_graph_depth}, at_bound));
        at_bound.push_back(tensors[ag::max_graph_depth]);
        CHECK_FALSE(ag::validate_graph(std::vector<uint64_t>{ag::max_graph_depth + 1}, at_bound));
    }
}

TEST_CASE("Device: sends only handles it received and tensors inside their buffers") {
    Fixture f;
    Device& d = *f.dev;
    auto buf = f.buffer(256);
    auto in = ag::make_tensor(ag::Type::f32, {16}).place(buf.handle, 0);
    std::vector<float> x(16);

    SECTION("a tensor past its buffer's end") {
        auto out = ag::make_tensor(ag::Type::f32, {16}).place(buf.handle, 200);
        check_error(d.set_tensor(out, std::as_bytes(std::span(x))), Errc::invalid_argument,
                    "buffer_set_tensor");
        auto wrap = in;
        wrap.data = UINT64_MAX - 8;
        check_error(d.get_tensor(wrap, std::as_writable_bytes(std::span(x))),
                    Errc::invalid_argument, "buffer_get_tensor");
        ag::Graph g;
        g.add_node(out, ag::Op::add, {g.add(in), g.add(in)});
        CHECK(d.graph_compute(g).error() == Errc::invalid_argument);
    }
    SECTION("bytes past the tensor's end") {
        check_error(d.set_tensor(in, std::as_bytes(std::span(x)), 4), Errc::invalid_argument,
                    "buffer_set_tensor");
        std::vector<float> big(17);
        check_error(d.get_tensor(in, std::as_writable_bytes(std::span(big))),
                    Errc::invalid_argument, "buffer_get_tensor");
    }
    SECTION("a tensor of a type whose size is unknown") {
        auto odd = in;
        odd.type = 5;
        check_error(d.set_tensor(odd, std::as_bytes(std::span(x))), Errc::invalid_argument,
                    "buffer_set_tensor");
    }
    SECTION("a tensor without a buffer") {
        auto none = ag::make_tensor(ag::Type::f32, {16});
        check_error(d.set_tensor(none, std::as_bytes(std::span(x))), Errc::ggml_unknown_handle,
                    "buffer_set_tensor");
        ag::Graph g;
        g.add_node(none, ag::Op::add, {g.add(in), g.add(in)});
        CHECK(d.graph_compute(g).error() == Errc::ggml_unknown_handle);
    }
    SECTION("copies between tensors of different sizes") {
        auto small = ag::make_tensor(ag::Type::f32, {8}).place(buf.handle, 64);
        check_error(d.copy_tensor(in, small), Errc::invalid_argument, "buffer_cpy_tensor");
    }
    SECTION("a graph naming a source it does not carry") {
        ag::Graph g;
        g.add_node(in, ag::Op::add, {42, 43});
        check_error(d.graph_compute(g), Errc::invalid_argument, "backend_graph_compute");
    }
    SECTION("a freed buffer is unknown from then on") {
        REQUIRE(d.free_buffer(buf.handle));
        const uint64_t frees = f.calls(ag::Command::buffer_free_buffer);
        check_error(d.free_buffer(buf.handle), Errc::ggml_unknown_handle, "buffer_free_buffer");
        check_error(d.base(buf.handle), Errc::ggml_unknown_handle, "buffer_get_base");
        check_error(d.clear(buf.handle, 1), Errc::ggml_unknown_handle, "buffer_clear");
        check_error(d.set_tensor(in, std::as_bytes(std::span(x))), Errc::ggml_unknown_handle,
                    "buffer_set_tensor");
        CHECK(f.calls(ag::Command::buffer_free_buffer) == frees); // nothing sent
        CHECK(f.calls(ag::Command::buffer_get_base) == 0);
    }
    SECTION("null and foreign handles") {
        check_error(d.base(ag::BufferHandle{}), Errc::ggml_unknown_handle, "buffer_get_base");
        check_error(d.buffer_type_name(ag::BufferTypeHandle{}), Errc::ggml_unknown_handle,
                    "buffer_type_get_name");
        // A handle another device received is foreign here.
        Fixture other;
        auto theirs = other.buffer(64);
        check_error(d.base(theirs.handle), Errc::ggml_unknown_handle, "buffer_get_base");
        auto their_type = other.dev->buffer_from_ptr(64, 64);
        REQUIRE(their_type);
        check_error(d.alloc_buffer(their_type->buffer.type, 64), Errc::ggml_unknown_handle,
                    "buffer_type_alloc_buffer");
    }
    CHECK(f.calls(ag::Command::buffer_set_tensor) == 0);
    CHECK(f.calls(ag::Command::buffer_get_tensor) == 0);
    CHECK(f.calls(ag::Command::backend_graph_compute) == 0);
}

TEST_CASE("Device: hostile replies are named errors") {
    SECTION("null buffer type") {
        Fixture f("null_buffer_type");
        check_error(f.dev->buffer_type(), Errc::decode_bad_value, "device_get_buffer_type");
    }
    SECTION("null buffer: the allocation failed") {
        Fixture f("null_buffer");
        auto t = f.dev->buffer_type();
        REQUIRE(t);
        check_error(f.dev->alloc_buffer(*t, 64), Errc::out_of_memory, "buffer_type_alloc_buffer");
    }
    SECTION("the same buffer handle twice") {
        Fixture f("duplicate_buffer");
        auto t = f.dev->buffer_type();
        REQUIRE(t);
        REQUIRE(f.dev->alloc_buffer(*t, 64));
        check_error(f.dev->alloc_buffer(*t, 64), Errc::decode_bad_value,
                    "buffer_type_alloc_buffer");
    }
    SECTION("a base whose buffer wraps the address space") {
        Fixture f("base_wraps");
        auto b = f.buffer(4096);
        check_error(f.dev->base(b.handle), Errc::decode_bad_value, "buffer_get_base");
    }
    SECTION("base address 0") {
        Fixture f("base_zero");
        auto b = f.buffer(64);
        check_error(f.dev->base(b.handle), Errc::decode_bad_value, "buffer_get_base");
    }
    SECTION("string without NUL") {
        Fixture f("no_nul");
        check_error(f.dev->name(), Errc::decode_missing_nul, "device_get_name");
    }
    SECTION("status outside ggml's enum, and a failed status") {
        for (auto [mode, code] : {std::pair{"bad_status", Errc::decode_bad_value},
                                  std::pair{"status_failed", Errc::ggml_status_failed}}) {
            Fixture f(mode);
            auto b = f.buffer(192);
            ag::Graph g;
            auto t = [&](uint64_t off) {
                return ag::make_tensor(ag::Type::f32, {16}).place(b.handle, off);
            };
            g.add_node(t(128), ag::Op::add, {g.add(t(0)), g.add(t(64))});
            check_error(f.dev->graph_compute(g), code, "backend_graph_compute");
        }
    }
    SECTION("device type out of range") {
        Fixture f("bad_type");
        check_error(f.dev->type(), Errc::decode_bad_value, "device_get_type");
    }
    SECTION("bool out of range") {
        Fixture f("bad_bool");
        check_error(f.dev->props(), Errc::decode_bad_value, "device_get_props");
        auto b = f.buffer(128);
        auto a = ag::make_tensor(ag::Type::f32, {16}).place(b.handle, 0);
        auto c = ag::make_tensor(ag::Type::f32, {16}).place(b.handle, 64);
        check_error(f.dev->copy_tensor(a, c), Errc::decode_bad_value, "buffer_cpy_tensor");
    }
    SECTION("free memory above total") {
        Fixture f("memory_inverted");
        check_error(f.dev->memory(), Errc::decode_bad_value, "device_get_memory");
    }
    SECTION("alignment not a power of two") {
        Fixture f("bad_alignment");
        auto t = f.dev->buffer_type();
        REQUIRE(t);
        check_error(f.dev->alignment(*t), Errc::decode_bad_value, "buffer_type_get_alignment");
    }
    SECTION("negative count") {
        Fixture f("negative_count");
        check_error(f.dev->count(), Errc::decode_bad_value, "device_get_count");
    }
    SECTION("the host refuses") {
        Fixture f("refuse");
        auto r = f.dev->name();
        check_error(r, Errc::forward_backend_error, "device_get_name");
        CHECK(r.error().wire_code() == 5); // FORWARD base index 4 + 1
    }
}

TEST_CASE("Device: metadata calls have a deadline, compute has none by default") {
    ag::DeviceOptions defaults;
    CHECK(defaults.metadata_timeout > 0s);
    CHECK(defaults.transfer_timeout > 0s);
    CHECK_FALSE(defaults.compute_timeout.has_value());

    ag::DeviceOptions o;
    o.metadata_timeout = 100ms;
    Fixture f("slow_name", o);
    const auto start = apir::Clock::now();
    auto r = f.dev->name();
    const auto took = apir::Clock::now() - start;
    check_error(r, Errc::timeout, "device_get_name");
    CHECK(took < 100ms + 900ms); // the host answers after 1.5 s
}

#if APIR_HAVE_GGML_HEADERS
TEST_CASE("a raw ggml tensor is sent sanitized: only markers where the host reads copies") {
    ggml_tensor src0{}, src1{}, view{}, op{};
    src0.type = GGML_TYPE_F16;
    src0.buffer = reinterpret_cast<ggml_backend_buffer*>(uintptr_t{0x1000});
    src0.data = &src1;
    src0.src[0] = &src1;
    src1.type = GGML_TYPE_F32;
    op.type = GGML_TYPE_F32;
    op.op = GGML_OP_MUL_MAT;
    op.ne[0] = 3;
    op.buffer = reinterpret_cast<ggml_backend_buffer*>(uintptr_t{0x2000});
    op.src[0] = &src0;
    op.src[1] = &src1;
    op.src[3] = &src0; // after the first null: never reached by ggml's host
    op.view_src = &view;
    op.data = &view;

    std::array<std::byte, 4 * sizeof(ggml_tensor) + 64> buf{};
    Fixture f;
    auto bt = f.dev->buffer_type();
    REQUIRE(bt);
    auto b = f.dev->alloc_buffer(*bt, 64);
    REQUIRE(b);
    apir::Encoder e(buf);
    e.put(ag::SupportsOpRequest{{&op, b->handle}});
    REQUIRE(e.ok());
    // op, its buffer handle, view_src, src[0], src[1]
    REQUIRE(e.size() == 4 * sizeof(ggml_tensor) + 8);
    ggml_tensor sent;
    std::memcpy(&sent, buf.data(), sizeof sent);
    CHECK(sent.op == GGML_OP_MUL_MAT);
    CHECK(sent.ne[0] == 3);
    CHECK(sent.buffer != nullptr);
    CHECK(sent.view_src != nullptr);
    CHECK(sent.src[0] != nullptr);
    CHECK(sent.src[1] != nullptr);
    CHECK(sent.src[2] == nullptr);
    CHECK(sent.src[3] == nullptr);
    CHECK(sent.data == nullptr);
    CHECK(read_at<uint64_t>(buf, sizeof(ggml_tensor)) == b->handle.value());
    ggml_tensor s0;
    std::memcpy(&s0, buf.data() + 8 + 2 * sizeof(ggml_tensor), sizeof s0);
    CHECK(s0.type == GGML_TYPE_F16);
    CHECK(s0.buffer == nullptr);
    CHECK(s0.src[0] == nullptr);
    CHECK(s0.data == nullptr);

    // The test backend does not know ggml's layout and refuses; the error is named.
    check_error(ag::supports_op(*f.dev, &op, b->handle), Errc::forward_backend_error,
                "device_supports_op");
    check_error(ag::get_alloc_size(*f.dev, *bt, &src1), Errc::forward_backend_error,
                "buffer_type_get_alloc_size");
    CHECK(ag::get_alloc_size(*f.dev, ag::BufferTypeHandle{}, &src1).error() ==
          Errc::ggml_unknown_handle);
}

TEST_CASE("the numbers of apir/ggml match ggml.h") {
    static_assert(static_cast<int>(ag::Op::add) == GGML_OP_ADD);
    static_assert(static_cast<int>(ag::Op::mul_mat) == GGML_OP_MUL_MAT);
    static_assert(static_cast<int>(ag::Op::sub) == GGML_OP_SUB);
    static_assert(static_cast<int>(ag::Op::mul) == GGML_OP_MUL);
    static_assert(static_cast<int>(ag::Op::div) == GGML_OP_DIV);
    static_assert(static_cast<int>(ag::Op::sqr) == GGML_OP_SQR);
    static_assert(static_cast<int>(ag::Op::sqrt) == GGML_OP_SQRT);
    static_assert(static_cast<int>(ag::Op::sum) == GGML_OP_SUM);
    static_assert(static_cast<int>(ag::Op::mean) == GGML_OP_MEAN);
    static_assert(static_cast<int>(ag::Op::scale) == GGML_OP_SCALE);
    static_assert(static_cast<int>(ag::Op::cpy) == GGML_OP_CPY);
    static_assert(static_cast<int>(ag::Op::cont) == GGML_OP_CONT);
    static_assert(static_cast<int>(ag::Op::reshape) == GGML_OP_RESHAPE);
    static_assert(static_cast<int>(ag::Op::view) == GGML_OP_VIEW);
    static_assert(static_cast<int>(ag::Op::permute) == GGML_OP_PERMUTE);
    static_assert(static_cast<int>(ag::Op::transpose) == GGML_OP_TRANSPOSE);
    static_assert(ag::op_count == GGML_OP_COUNT);
    static_assert(static_cast<int>(ag::Op::map_custom1) == GGML_OP_MAP_CUSTOM1);
    static_assert(static_cast<int>(ag::Op::map_custom3) == GGML_OP_MAP_CUSTOM3);
    static_assert(static_cast<int>(ag::Op::custom) == GGML_OP_CUSTOM);
    static_assert(static_cast<int>(ag::Type::q8_0) == GGML_TYPE_Q8_0);
    static_assert(static_cast<int>(ag::Type::bf16) == GGML_TYPE_BF16);
    static_assert(static_cast<int>(ag::Type::i32) == GGML_TYPE_I32);
    static_assert(int{ag::flag_compute} == int{GGML_TENSOR_FLAG_COMPUTE});
    static_assert(static_cast<int>(ag::Status::alloc_failed) == GGML_STATUS_ALLOC_FAILED);
    static_assert(static_cast<int>(ag::Status::aborted) == GGML_STATUS_ABORTED);
    CHECK(ag::type_traits(ag::Type::q4_0)->type_size == 18);
}
#endif
