// Writes fuzz-ggml-host's seed inputs into a folder (fuzz_ggml_host.cpp has the format):
// one input per command, and sessions that upload tensors and compute valid graphs of the
// ops the backend's table covers. Written with the guest's own encoders.
//
//   fuzz-ggml-host-seeds DIR
#include <apir/ggml/commands.hpp>
#include <apir/ggml/graph.hpp>

#include <ggml.h>

#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

namespace {

namespace g = apir::ggml;

uint64_t token(const char* t) {
    uint64_t v = 0;
    std::memcpy(&v, t, 8);
    return v;
}
const g::BufferHandle buf0 = g::detail::HandleAccess::make<g::BufferTag>(token("AAIPBUF0"));
const g::BufferHandle buf1 = g::detail::HandleAccess::make<g::BufferTag>(token("AAIPBUF1"));
const g::BufferTypeHandle buft = g::detail::HandleAccess::make<g::BufferTypeTag>(token("AAIPBUFT"));

struct Input {
    std::vector<uint8_t> bytes;
    void record(uint8_t kind, const std::vector<std::byte>& b) {
        bytes.push_back(kind);
        bytes.push_back(static_cast<uint8_t>(b.size()));
        bytes.push_back(static_cast<uint8_t>(b.size() >> 8));
        for (std::byte x : b)
            bytes.push_back(static_cast<uint8_t>(x));
    }
    template <class C>
    Input& call(const typename C::request& req) {
        std::vector<std::byte> b(1 << 16);
        apir::Encoder e(std::span<std::byte>(b).subspan(1));
        e.put(req);
        b[0] = static_cast<std::byte>(C::flags);
        b.resize(1 + e.size());
        record(0, b);
        return *this;
    }
    Input& raw(uint32_t cmd, const std::vector<std::byte>& req) {
        std::vector<std::byte> b{static_cast<std::byte>(cmd)};
        b.insert(b.end(), req.begin(), req.end());
        record(0, b);
        return *this;
    }
    Input& blob(const void* p, size_t n, uint8_t kind = 2) {
        std::vector<std::byte> b(n);
        std::memcpy(b.data(), p, n);
        record(kind, b);
        return *this;
    }
    Input& graph(const g::Graph& graph) {
        std::vector<std::byte> b(graph.encoded_size());
        if (!graph.encode(b)) std::abort();
        record(2, b);
        return call<g::BackendGraphCompute>({3, b.size()});
    }
};

g::RpcTensor t(g::Type type, std::initializer_list<uint32_t> ne, uint64_t off) {
    return g::make_tensor(type, ne).place(buf1, off);
}
g::RpcTensor f32(std::initializer_list<uint32_t> ne, uint64_t off) {
    return t(g::Type::f32, ne, off);
}
g::Op op(ggml_op o) {
    return static_cast<g::Op>(o);
}

} // namespace

int main(int argc, char** argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: fuzz-ggml-host-seeds DIR\n");
        return 2;
    }
    std::vector<std::pair<std::string, Input>> seeds;
    auto add = [&](std::string name, Input in) {
        seeds.emplace_back(std::move(name), std::move(in));
    };

    // One per command.
    for (uint32_t id : {0u, 1u, 2u, 3u, 4u, 5u, 7u, 8u})
        add("cmd" + std::to_string(id), Input{}.raw(id, {}));
    {
        ggml_tensor op_t{};
        op_t.type = GGML_TYPE_F32;
        op_t.op = GGML_OP_ADD;
        for (int i = 0; i < 4; ++i)
            op_t.ne[i] = 4, op_t.nb[i] = 4 * (i ? 4 : 1);
        op_t.nb[0] = 4;
        ggml_tensor src = op_t;
        src.op = GGML_OP_NONE;
        op_t.src[0] = op_t.src[1] = reinterpret_cast<ggml_tensor*>(1);
        std::vector<std::byte> req(3 * sizeof(ggml_tensor));
        std::memcpy(req.data(), &op_t, sizeof op_t);
        std::memcpy(req.data() + sizeof op_t, &src, sizeof src);
        std::memcpy(req.data() + 2 * sizeof op_t, &src, sizeof src);
        add("cmd6", Input{}.raw(6, req));
        std::vector<std::byte> alloc(8);
        uint64_t h = buft.value();
        std::memcpy(alloc.data(), &h, 8);
        src.src[0] = nullptr;
        alloc.resize(8 + sizeof src);
        std::memcpy(alloc.data() + 8, &src, sizeof src);
        add("cmd15", Input{}.raw(15, alloc));
    }
    add("cmd9", Input{}.call<g::DeviceBufferFromPtr>({4, 4096, 4096}));
    add("cmd10", Input{}.call<g::BufferTypeGetName>({buft}));
    add("cmd11", Input{}.call<g::BufferTypeGetAlignment>({buft}));
    add("cmd12", Input{}.call<g::BufferTypeGetMaxSize>({buft}));
    add("cmd13", Input{}.call<g::BufferTypeIsHost>({buft}));
    add("cmd14", Input{}.call<g::BufferTypeAllocBuffer>({buft, 1024}));
    add("cmd16", Input{}.call<g::BufferGetBase>({buf0}));
    const float v[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    add("cmd17", Input{}.blob(v, sizeof v).call<g::BufferSetTensor>({buf1, f32({8}, 0), 3, 0, 32}));
    add("cmd18", Input{}.call<g::BufferGetTensor>({buf1, f32({8}, 0), 3, 0, 32}));
    add("cmd19", Input{}.call<g::BufferCpyTensor>({buf1, f32({8}, 0), f32({8}, 64)}));
    add("cmd20", Input{}.call<g::BufferClear>({buf0, 7}));
    add("cmd21", Input{}.call<g::BufferFreeBuffer>({buf0}));
    add("cmd22", Input{}.call<g::BufferFreeBuffer>({buf0}));
    add("cmd23", Input{}.raw(23, {})); // apir's capability query (the harness maps 23 to it)

    // Graphs of the ops the table covers.
    auto session = [&](const char* name, const g::Graph& graph) {
        Input in;
        in.blob(v, sizeof v).call<g::BufferSetTensor>({buf1, f32({8}, 0), 3, 0, 32});
        in.graph(graph).call<g::BufferGetTensor>({buf1, f32({8}, 1024), 3, 0, 32});
        add(name, std::move(in));
    };
    {
        for (ggml_op o : {GGML_OP_ADD, GGML_OP_SUB, GGML_OP_MUL, GGML_OP_DIV}) {
            g::Graph gr;
            uint64_t a = gr.add(f32({8}, 0)), b = gr.add(f32({4}, 512));
            gr.add_node(f32({8}, 1024), op(o), {a, b});
            session(ggml_op_name(o), gr);
        }
    }
    {
        g::Graph gr;
        uint64_t a = gr.add(f32({4, 2}, 0)), b = gr.add(f32({4, 3}, 512));
        gr.add_node(f32({2, 3}, 1024), op(GGML_OP_MUL_MAT), {a, b});
        session("mul_mat", gr);
    }
    {
        g::Graph gr;
        uint64_t a = gr.add(f32({8, 2}, 0)), m = gr.add(f32({8, 2}, 512));
        g::RpcTensor d = f32({8, 2}, 1024);
        float scale = 1.0f;
        std::memcpy(&d.op_params[0], &scale, 4);
        d.op = GGML_OP_SOFT_MAX, d.src[0] = a, d.src[1] = m, d.flags = g::flag_compute;
        gr.add_node(d);
        session("soft_max", gr);
    }
    {
        g::Graph gr;
        uint64_t a = gr.add(f32({8, 2, 3}, 0));
        uint64_t p = gr.add(t(g::Type::i32, {3}, 512));
        g::RpcTensor d = f32({8, 2, 3}, 1024);
        d.op_params[1] = 8;
        float base = 10000.0f, one = 1.0f;
        std::memcpy(&d.op_params[5], &base, 4);
        std::memcpy(&d.op_params[6], &one, 4);
        std::memcpy(&d.op_params[8], &one, 4);
        d.op = GGML_OP_ROPE, d.src[0] = a, d.src[1] = p, d.flags = g::flag_compute;
        gr.add_node(d);
        session("rope", gr);
    }
    {
        // With frequency factors (src[2]): the kernel reads ne0 / 2 of them.
        g::Graph gr;
        uint64_t a = gr.add(f32({8, 2, 3}, 0));
        uint64_t p = gr.add(t(g::Type::i32, {3}, 512));
        uint64_t f = gr.add(f32({4}, 768));
        g::RpcTensor d = f32({8, 2, 3}, 1024);
        d.op_params[1] = 8;
        d.op_params[2] = 2; // NeoX
        float base = 10000.0f, one = 1.0f;
        std::memcpy(&d.op_params[5], &base, 4);
        std::memcpy(&d.op_params[6], &one, 4);
        std::memcpy(&d.op_params[8], &one, 4);
        d.op = GGML_OP_ROPE, d.src[0] = a, d.src[1] = p, d.src[2] = f, d.flags = g::flag_compute;
        gr.add_node(d);
        session("rope_freq", gr);
    }
    {
        // SCALE over a dimension of 1 (whose stride the kernel uses for every row).
        g::Graph gr;
        uint64_t a = gr.add(f32({8, 1, 4}, 0));
        g::RpcTensor d = f32({8, 1, 4}, 1024);
        float s2 = 2.0f;
        std::memcpy(&d.op_params[0], &s2, 4);
        d.op = GGML_OP_SCALE, d.src[0] = a, d.flags = g::flag_compute;
        gr.add_node(d);
        session("scale_rows", gr);
    }
    for (bool into : {true, false}) {
        // Copies into and out of a quantized type (CPY: src[1] is the destination).
        g::Graph gr;
        const g::RpcTensor fl = f32({32, 2}, 0), q = t(g::Type::q8_0, {32, 2}, 512);
        uint64_t a = gr.add(into ? fl : q);
        g::RpcTensor dst = into ? q : f32({32, 2}, 1024);
        uint64_t b = gr.add(dst);
        dst.view_src = b;
        dst.op = GGML_OP_CPY, dst.src[0] = a, dst.src[1] = b, dst.flags = g::flag_compute;
        gr.add_node(dst);
        session(into ? "cpy_to_q8_0" : "cpy_from_q8_0", gr);
    }
    {
        g::Graph gr;
        uint64_t a = gr.add(f32({4, 3}, 0));
        uint64_t i = gr.add(t(g::Type::i32, {2}, 512));
        gr.add_node(f32({4, 2}, 1024), op(GGML_OP_GET_ROWS), {a, i});
        session("get_rows", gr);
        // The same graph again (the host runs the graph it built): new indices, one past
        // the rows, then its buffer freed.
        Input again;
        const int32_t valid[2] = {2, 0}, past[2] = {1, 3};
        again.blob(valid, sizeof valid)
            .call<g::BufferSetTensor>({buf1, t(g::Type::i32, {2}, 512), 3, 0, 8});
        again.graph(gr);
        again
            .blob(past, sizeof past, 3) // blob 4 now; blob 3 keeps the graph
            .call<g::BufferSetTensor>({buf1, t(g::Type::i32, {2}, 512), 4, 0, 8})
            .call<g::BackendGraphCompute>({3, gr.encoded_size()})
            .call<g::BufferFreeBuffer>({buf1})
            .call<g::BackendGraphCompute>({3, gr.encoded_size()});
        add("get_rows_again", std::move(again));
        g::Graph s;
        uint64_t rows = s.add(f32({4, 2}, 0));
        uint64_t idx = s.add(t(g::Type::i64, {2}, 512));
        uint64_t dst = s.add(f32({4, 3}, 1024));
        g::RpcTensor d = f32({4, 3}, 1024);
        d.view_src = dst;
        d.op = GGML_OP_SET_ROWS, d.src[0] = rows, d.src[1] = idx, d.flags = g::flag_compute;
        s.add_node(d);
        session("set_rows", s);
    }
    {
        g::Graph gr;
        uint64_t a = gr.add(f32({8}, 0));
        uint64_t b = gr.add(t(g::Type::f16, {8}, 512));
        g::RpcTensor d = t(g::Type::f16, {8}, 512);
        d.view_src = b;
        d.op = GGML_OP_CPY, d.src[0] = a, d.src[1] = b, d.flags = g::flag_compute;
        gr.add_node(d);
        session("cpy", gr);
    }
    for (ggml_op o : {GGML_OP_RMS_NORM, GGML_OP_NORM, GGML_OP_SCALE, GGML_OP_CONT, GGML_OP_DUP}) {
        g::Graph gr;
        uint64_t a = gr.add(f32({8}, 0));
        g::RpcTensor d = f32({8}, 1024);
        float eps = 1e-5f;
        std::memcpy(&d.op_params[0], &eps, 4);
        d.op = o, d.src[0] = a, d.flags = g::flag_compute;
        gr.add_node(d);
        session(ggml_op_name(o), gr);
    }
    {
        g::Graph gr;
        uint64_t a = gr.add(f32({8}, 0));
        g::RpcTensor d = f32({8}, 1024);
        d.op_params[0] = GGML_UNARY_OP_SILU;
        d.op = GGML_OP_UNARY, d.src[0] = a, d.flags = g::flag_compute;
        gr.add_node(d);
        session("unary", gr);
        g::Graph sw;
        uint64_t x = sw.add(f32({8}, 0));
        g::RpcTensor e = f32({4}, 1024);
        e.op_params[0] = GGML_GLU_OP_SWIGLU;
        e.op = GGML_OP_GLU, e.src[0] = x, e.flags = g::flag_compute;
        sw.add_node(e);
        session("swiglu", sw);
        g::Graph v2;
        uint64_t base = v2.add(f32({8}, 0));
        g::RpcTensor view = f32({4}, 16);
        view.view_src = base, view.view_offs = 16, view.op = GGML_OP_VIEW, view.src[0] = base;
        uint64_t vid = v2.add(view);
        v2.add_node(f32({4}, 1024), op(GGML_OP_ADD), {vid, vid});
        session("view_add", v2);
    }
    {
        // Attention: 2 query rows of 2 heads over 3 keys of 1 head, a mask and sinks.
        g::Graph gr;
        uint64_t q = gr.add(f32({8, 2, 2}, 0));
        uint64_t k = gr.add(t(g::Type::f16, {8, 3, 1}, 256));
        uint64_t vv = gr.add(t(g::Type::f16, {8, 3, 1}, 320));
        uint64_t m = gr.add(t(g::Type::f16, {3, 2}, 384));
        uint64_t sk = gr.add(f32({2}, 448));
        g::RpcTensor d = f32({8, 2, 2}, 1024);
        float scale = 0.35f;
        std::memcpy(&d.op_params[0], &scale, 4);
        d.op = GGML_OP_FLASH_ATTN_EXT, d.src[0] = q, d.src[1] = k, d.src[2] = vv, d.src[3] = m,
        d.src[4] = sk, d.flags = g::flag_compute;
        gr.add_node(d);
        session("flash_attn_ext", gr);
    }

    for (auto& [name, in] : seeds) {
        std::string path = std::string(argv[1]) + "/" + name;
        FILE* f = std::fopen(path.c_str(), "wb");
        if (!f) return 1;
        std::fwrite(in.bytes.data(), 1, in.bytes.size(), f);
        std::fclose(f);
    }
    std::printf("%zu seeds in %s\n", seeds.size(), argv[1]);
    return 0;
}
