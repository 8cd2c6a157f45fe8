// libggml-apir-host against a hostile guest: this test is the APIR host (it loads the backend
// library, offers configuration and blobs, calls the dispatcher) and sends what a guest may
// send. Each case is one of the inputs that break ggml's own host backend
// (RELIABILITY.md, "The ggml host backend"): here each gets a named code and the backend
// goes on. Needs ggml's CPU backend: APIR_GGML_PEER_DIR (else skipped, 77).
#include "catch.hpp"

#include <apir/backend_abi.h>
#include <apir/ggml/commands.hpp>
#include <apir/ggml/graph.hpp>

#include <ggml.h>

#include <arpa/inet.h>
#include <dlfcn.h>
#include <netinet/in.h>
#include <sched.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <map>
#include <optional>
#include <string>
#include <thread>
#include <vector>

namespace {

namespace g = apir::ggml;

// The backend's codes (docs/GGML-HOST.md).
constexpr uint32_t bad_request = 1, unknown_handle = 2, bad_tensor = 3, bad_range = 4,
                   bad_graph = 5, not_initialized = 7, unsupported_op = 9, no_memory = 10,
                   bad_index = 12;

std::string g_cpu_lib;
std::map<uint32_t, std::string> g_config_path;  // ctx -> ggml.library.path
std::map<uint32_t, std::string> g_rpc_endpoint; // ctx -> ggml.rpc.endpoint
// Blobs are page-aligned, as the host's mappings are.
template <class T>
struct PageAllocator {
    using value_type = T;
    PageAllocator() = default;
    template <class U>
    PageAllocator(const PageAllocator<U>&) {}
    T* allocate(size_t n) {
        return static_cast<T*>(::operator new (n * sizeof(T), std::align_val_t{4096}));
    }
    void deallocate(T* p, size_t) { ::operator delete (p, std::align_val_t{4096}); }
    friend bool operator==(PageAllocator, PageAllocator) { return true; }
};
using Blob = std::vector<std::byte, PageAllocator<std::byte>>;
std::map<uint32_t, Blob> g_blobs;

const char* get_config(uint32_t ctx, const char* key) {
    if (std::strcmp(key, "ggml.library.path") == 0) {
        auto it = g_config_path.find(ctx);
        return it == g_config_path.end() ? g_cpu_lib.c_str() : it->second.c_str();
    }
    if (std::strcmp(key, "ggml.rpc.endpoint") == 0) {
        auto it = g_rpc_endpoint.find(ctx);
        return it == g_rpc_endpoint.end() ? nullptr : it->second.c_str();
    }
    if (std::strcmp(key, "ggml.library.reg") == 0) return "ggml_backend_cpu_reg";
    // Context 16 leaves the threads to the backend (per graph, timed); the others fix 1.
    if (std::strcmp(key, "ggml.cpu.threads") == 0) return ctx == 16 ? nullptr : "1";
    if (std::strcmp(key, "ggml.host.max_memory") == 0 && ctx == 10) return "1048576";
    if (std::strcmp(key, "ggml.host.max_buffers") == 0 && ctx == 12) return "4";
    if (std::strcmp(key, "ggml.host.graph_cache") == 0 && ctx == 13) return "4";
    if (std::strcmp(key, "ggml.host.graph_cache") == 0 && ctx == 14) return "0";
    if (std::strcmp(key, "ggml.host.graph_cache") == 0 && ctx == 15) return "1025";
    return nullptr;
}
void* get_shmem(uint32_t, uint32_t res) {
    auto it = g_blobs.find(res);
    return it == g_blobs.end() ? nullptr : it->second.data();
}
void* get_shmem_sized(uint32_t, uint32_t res, uint64_t* size) {
    auto it = g_blobs.find(res);
    if (it == g_blobs.end()) return nullptr;
    *size = it->second.size();
    return it->second.data();
}
virgl_apir_callbacks g_callbacks{&get_config, &get_shmem};

struct Library {
    void* handle = nullptr;
    apir_backend_initialize_fn init = nullptr;
    apir_backend_deinit_fn deinit = nullptr;
    apir_backend_dispatcher_fn dispatch = nullptr;
    apir_backend_set_shmem_sized_fn set_sized = nullptr;
};

Library& library() {
    static Library lib = [] {
        Library l;
        const char* peer = std::getenv("APIR_GGML_PEER_DIR");
        if (!peer || !*peer) {
            std::printf("SKIP: APIR_GGML_PEER_DIR is not set (ggml's CPU backend is needed)\n");
            std::exit(77);
        }
        g_cpu_lib = std::string(peer) + "/lib/libggml-cpu.so.0";
        l.handle = dlopen(APIR_GGML_HOST_BACKEND, RTLD_NOW | RTLD_LOCAL);
        if (!l.handle) {
            std::printf("cannot load %s: %s\n", APIR_GGML_HOST_BACKEND, dlerror());
            std::exit(1);
        }
        l.init = reinterpret_cast<apir_backend_initialize_fn>(
            dlsym(l.handle, "apir_backend_initialize"));
        l.deinit = reinterpret_cast<apir_backend_deinit_fn>(dlsym(l.handle, "apir_backend_deinit"));
        l.dispatch = reinterpret_cast<apir_backend_dispatcher_fn>(
            dlsym(l.handle, "apir_backend_dispatcher"));
        l.set_sized = reinterpret_cast<apir_backend_set_shmem_sized_fn>(
            dlsym(l.handle, "apir_backend_set_shmem_sized"));
        return l;
    }();
    return lib;
}

template <class Resp>
struct Result {
    uint32_t code = 0xdead;
    Resp reply{};
};

/// One open context of the backend, driven with the guest's typed calls.
class Guest {
public:
    explicit Guest(uint32_t ctx, bool sized = true) : ctx_(ctx) {
        Library& l = library();
        if (sized) l.set_sized(ctx, &get_shmem_sized);
        init_code = l.init(ctx, &g_callbacks);
    }
    ~Guest() { library().deinit(ctx_); }
    Guest(const Guest&) = delete;
    Guest& operator=(const Guest&) = delete;

    uint32_t raw(uint32_t cmd, std::span<const std::byte> req,
                 std::vector<std::byte>* reply = nullptr) {
        std::vector<std::byte> in(req.begin(), req.end());
        in.resize(in.size() + 4);
        std::vector<char> out(1 << 16);
        char* end = nullptr;
        char* dec = reinterpret_cast<char*>(in.data());
        const uint32_t code = library().dispatch(ctx_, &g_callbacks, cmd, dec, dec + req.size(),
                                                 out.data(), out.data() + out.size(), &end);
        if (reply)
            reply->assign(reinterpret_cast<std::byte*>(out.data()),
                          reinterpret_cast<std::byte*>(end));
        return code;
    }

    template <class C>
    Result<typename C::response> call(const typename C::request& req) {
        std::vector<std::byte> buf(1 << 16);
        apir::Encoder e(buf);
        e.put(req);
        REQUIRE(e.ok());
        std::vector<std::byte> reply;
        Result<typename C::response> r;
        r.code = raw(C::flags, e.written(), &reply);
        if (r.code == 0) {
            apir::Decoder d(reply);
            REQUIRE(d.get_into(r.reply));
        }
        return r;
    }

    g::BufferTypeHandle buft() {
        auto r = call<g::DeviceGetBufferType>(apir::Empty{});
        REQUIRE(r.code == 0);
        return r.reply.buffer_type;
    }
    g::BufferHandle alloc(uint64_t size) {
        auto r = call<g::BufferTypeAllocBuffer>({buft(), size});
        REQUIRE(r.code == 0);
        REQUIRE(!r.reply.buffer.is_null());
        return r.reply.buffer;
    }
    uint32_t set(g::BufferHandle b, const g::RpcTensor& t, uint32_t res, uint64_t off,
                 uint64_t size) {
        return call<g::BufferSetTensor>({b, t, res, off, size}).code;
    }
    uint32_t get(g::BufferHandle b, const g::RpcTensor& t, uint32_t res, uint64_t off,
                 uint64_t size) {
        return call<g::BufferGetTensor>({b, t, res, off, size}).code;
    }
    /// Puts the packed graph into blob res and computes it.
    Result<g::StatusReply> compute(std::span<const std::byte> graph, uint32_t res = 50) {
        g_blobs[res].assign(graph.begin(), graph.end());
        return call<g::BackendGraphCompute>({res, graph.size()});
    }
    Result<g::StatusReply> compute(const g::Graph& graph, uint32_t res = 50) {
        std::vector<std::byte> bytes(graph.encoded_size());
        auto n = graph.encode(bytes);
        REQUIRE(n);
        return compute(bytes, res);
    }

    uint32_t init_code = 0;

private:
    uint32_t ctx_;
};

constexpr uint32_t blob = 10;
void fill_blob(std::span<const float> v) {
    auto& b = g_blobs[blob];
    b.assign(1 << 16, std::byte{0});
    std::memcpy(b.data(), v.data(), v.size_bytes());
}
std::vector<float> read_blob(size_t n) {
    std::vector<float> v(n);
    std::memcpy(v.data(), g_blobs[blob].data(), n * 4);
    return v;
}

g::RpcTensor f32(std::initializer_list<uint32_t> ne, g::BufferHandle b, uint64_t off) {
    return g::make_tensor(g::Type::f32, ne).place(b, off);
}

/// The bytes of a packed graph written by hand (for counts a valid graph cannot have).
std::vector<std::byte> packed(uint32_t n_nodes, std::span<const uint64_t> nodes, uint32_t n_tensors,
                              std::span<const g::RpcTensor> tensors) {
    std::vector<std::byte> out(8 + nodes.size_bytes() + tensors.size_bytes());
    std::byte* p = out.data();
    std::memcpy(p, &n_nodes, 4);
    if (!nodes.empty()) std::memcpy(p + 4, nodes.data(), nodes.size_bytes());
    std::memcpy(p + 4 + nodes.size_bytes(), &n_tensors, 4);
    std::memcpy(p + 8 + nodes.size_bytes(), tensors.data(), tensors.size_bytes());
    return out;
}

/// Block elements and bytes of the types the tests below use (ggml's type traits; this
/// test does not link ggml).
std::pair<uint32_t, uint32_t> block_of(ggml_type type) {
    switch (type) {
    case GGML_TYPE_I8:
        return {1, 1};
    case GGML_TYPE_I16:
    case GGML_TYPE_F16:
        return {1, 2};
    case GGML_TYPE_I32:
        return {1, 4};
    case GGML_TYPE_I64:
    case GGML_TYPE_F64:
        return {1, 8};
    case GGML_TYPE_Q4_0:
    case GGML_TYPE_IQ4_NL:
        return {32, 18};
    case GGML_TYPE_Q8_0:
        return {32, 34};
    case GGML_TYPE_IQ4_XS:
        return {256, 136};
    case GGML_TYPE_Q8_1:
        return {32, 36};
    case GGML_TYPE_Q8_K:
        return {256, 292};
    case GGML_TYPE_IQ2_XXS:
        return {256, 66};
    case GGML_TYPE_IQ3_S:
        return {256, 110};
    case GGML_TYPE_IQ1_M:
        return {256, 56};
    default:
        return {1, 4};
    }
}

/// A tensor of the given ggml type, its strides those of a contiguous tensor.
g::RpcTensor typed(ggml_type type, std::initializer_list<uint32_t> ne, g::BufferHandle b,
                   uint64_t off) {
    g::RpcTensor t = f32(ne, b, off);
    const auto [blck, size] = block_of(type);
    t.type = static_cast<uint32_t>(type);
    t.nb[0] = size;
    t.nb[1] = size * (t.ne[0] / blck);
    t.nb[2] = t.nb[1] * t.ne[1];
    t.nb[3] = t.nb[2] * t.ne[2];
    return t;
}

/// A float op parameter as ggml stores it in op_params (int32 words).
int32_t f32_bits(float f) {
    return std::bit_cast<int32_t>(f);
}

/// Computes one node over its sources (ids 1..n, the node n + 1); the code answered.
uint32_t one_node(Guest& guest, std::vector<g::RpcTensor> srcs, g::RpcTensor out, ggml_op op,
                  std::initializer_list<std::pair<int, int32_t>> params = {}) {
    const auto n = static_cast<uint32_t>(srcs.size());
    for (uint32_t i = 0; i < n; ++i) {
        srcs[i].id = i + 1;
        out.src[i] = i + 1;
    }
    out.id = n + 1, out.op = op, out.flags = g::flag_compute;
    for (auto [i, v] : params)
        out.op_params[static_cast<size_t>(i)] = v;
    srcs.push_back(out);
    std::vector<uint64_t> nodes{n + 1};
    return guest.compute(packed(1, nodes, n + 1, srcs)).code;
}

/// c = a + b for 4 floats of buf, a at 0 and b at 16, c at `c_at`: the packed graph.
std::vector<std::byte> add_graph(g::BufferHandle buf, uint64_t c_at) {
    g::Graph graph;
    uint64_t ia = graph.add(f32({4}, buf, 0)), ib = graph.add(f32({4}, buf, 16));
    graph.add_node(f32({4}, buf, c_at), static_cast<g::Op>(GGML_OP_ADD), {ia, ib});
    std::vector<std::byte> bytes(graph.encoded_size());
    REQUIRE(graph.encode(bytes));
    return bytes;
}

/// Uploads a and b (add_graph), computes `packed`, and returns the 4 floats at c_at.
std::vector<float> add_with(Guest& guest, g::BufferHandle buf, std::span<const std::byte> packed,
                            uint64_t c_at, std::vector<float> a, std::vector<float> b) {
    fill_blob(a);
    REQUIRE(guest.set(buf, f32({4}, buf, 0), blob, 0, 16) == 0);
    fill_blob(b);
    REQUIRE(guest.set(buf, f32({4}, buf, 16), blob, 0, 16) == 0);
    auto r = guest.compute(packed);
    REQUIRE(r.code == 0);
    CHECK(r.reply.status == 0);
    REQUIRE(guest.get(buf, f32({4}, buf, c_at), blob, 0, 16) == 0);
    return read_blob(4);
}

/// Computes the same c = a + b graph `n` times on new data (k + {1, 2, 3, 4}, k = 1..n),
/// checking each result.
void add_rounds(Guest& guest, g::BufferHandle buf, int n) {
    const auto graph = add_graph(buf, 32);
    for (int i = 1; i <= n; ++i) {
        const auto k = static_cast<float>(i);
        REQUIRE(add_with(guest, buf, graph, 32, {k, k, k, k}, {1, 2, 3, 4}) ==
                std::vector<float>{1 + k, 2 + k, 3 + k, 4 + k});
    }
}

/// c = a + b on the first 48 bytes of buf: uploads a and b, computes, downloads and checks
/// c. Returns the packed graph, to compute again.
std::vector<std::byte> add_round(Guest& guest, g::BufferHandle buf) {
    auto graph = add_graph(buf, 32);
    CHECK(add_with(guest, buf, graph, 32, {1, 2, 3, 4}, {10, 20, 30, 40}) ==
          std::vector<float>{11, 22, 33, 44});
    return graph;
}

/// What the backend writes to stderr while f runs.
template <class F>
std::string stderr_of(F&& f) {
    std::fflush(stderr);
    char path[] = "/tmp/apir-host-stderr-XXXXXX";
    const int fd = mkstemp(path);
    REQUIRE(fd >= 0);
    unlink(path);
    const int saved = dup(2);
    dup2(fd, 2);
    f();
    std::fflush(stderr);
    dup2(saved, 2);
    close(saved);
    std::string out;
    lseek(fd, 0, SEEK_SET);
    char chunk[4096];
    for (ssize_t n; (n = read(fd, chunk, sizeof chunk)) > 0;)
        out.append(chunk, static_cast<size_t>(n));
    close(fd);
    return out;
}

/// The backend's count of graphs computed and reused, from the line it logs when the
/// context closes (destroys the guest).
std::string close_and_count(std::unique_ptr<Guest>& guest) {
    const std::string log = stderr_of([&] { guest.reset(); });
    const auto at = log.find("context closed: ");
    REQUIRE(at != std::string::npos);
    return log.substr(at + 16, log.find('\n', at) - at - 16);
}

/// A port of 127.0.0.1 nobody listens on (the kernel's pick, released).
int free_port() {
    const int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    int port = -1;
    if (fd >= 0 && bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 &&
        getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0)
        port = ntohs(a.sin_port);
    if (fd >= 0) close(fd);
    return port;
}
bool port_open(int port) {
    const int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<uint16_t>(port));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    const bool ok = fd >= 0 && connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
    if (fd >= 0) close(fd);
    return ok;
}

/// ggml's RPC server (tests/libggml-apir-host/rpc_server.cpp) on 127.0.0.1, killed at the end.
struct RpcServer {
    pid_t pid = -1;
    int port = -1;
    explicit RpcServer(const std::string& lib_dir) {
        port = free_port();
        if (port < 0) return;
        const std::string port_s = std::to_string(port);
        char* argv[] = {const_cast<char*>(APIR_TEST_RPC_SERVER), const_cast<char*>(lib_dir.c_str()),
                        const_cast<char*>(port_s.c_str()), nullptr};
        if (posix_spawn(&pid, APIR_TEST_RPC_SERVER, nullptr, nullptr, argv, environ) != 0) {
            pid = -1;
            return;
        }
        const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(30);
        while (!port_open(port) && std::chrono::steady_clock::now() < until)
            std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    ~RpcServer() {
        if (pid > 0) {
            kill(pid, SIGKILL);
            waitpid(pid, nullptr, 0);
        }
    }
    [[nodiscard]] bool listening() const { return pid > 0 && port_open(port); }
    [[nodiscard]] std::string endpoint() const { return "127.0.0.1:" + std::to_string(port); }
};

} // namespace

TEST_CASE("a remote device through ggml's RPC backend, checked like a local one") {
    library();
    const std::string lib_dir = std::string(std::getenv("APIR_GGML_PEER_DIR")) + "/lib";
    if (access((lib_dir + "/libggml-rpc.so.0").c_str(), R_OK) != 0) {
        WARN("skipped: no libggml-rpc.so.0 in " << lib_dir);
        return;
    }
    constexpr uint32_t rpc_ctx = 20, unreachable_ctx = 21;
    g_config_path[rpc_ctx] = g_config_path[unreachable_ctx] = lib_dir + "/libggml-rpc.so.0";

    // No server at the endpoint: the context does not open, nothing aborts.
    g_rpc_endpoint[unreachable_ctx] = "127.0.0.1:" + std::to_string(free_port());
    {
        Guest nowhere(unreachable_ctx);
        CHECK(nowhere.init_code != APIR_BACKEND_INIT_OK);
    }

    RpcServer server(lib_dir);
    REQUIRE(server.listening());
    g_rpc_endpoint[rpc_ctx] = server.endpoint();
    Guest guest(rpc_ctx);
    REQUIRE(guest.init_code == APIR_BACKEND_INIT_OK);
    auto name = guest.call<g::DeviceGetName>(apir::Empty{});
    REQUIRE(name.code == 0);
    CHECK(name.reply.value.rfind("RPC", 0) == 0);

    g::BufferHandle buf = guest.alloc(64 * 1024);
    const auto graph = add_round(guest, buf);
    const g::RpcTensor a = f32({4}, buf, 0), c = f32({4}, buf, 32);

    // The checks guard the remote device as they guard a local one: a node ggml-cpu would
    // abort on (on the server) is refused here, a range past the buffer never sent.
    CHECK(one_node(guest, {a}, c, GGML_OP_RMS_NORM, {{0, f32_bits(-1.0f)}}) == bad_tensor);
    CHECK(guest.set(buf, f32({4}, buf, 64 * 1024 - 8), blob, 0, 16) == bad_tensor);
    // The server lived through it: the context still computes.
    REQUIRE(guest.compute(graph).code == 0);
    REQUIRE(guest.get(buf, c, blob, 0, 16) == 0);
    CHECK(read_blob(4) == std::vector<float>{11, 22, 33, 44});
    CHECK(server.listening());
}

TEST_CASE("a valid session: allocate, upload, ADD and MUL_MAT graphs, download") {
    Guest guest(1);
    REQUIRE(guest.init_code == APIR_BACKEND_INIT_OK);
    auto name = guest.call<g::DeviceGetName>(apir::Empty{});
    REQUIRE(name.code == 0);
    CHECK(name.reply.value == "CPU");
    g::BufferHandle buf = guest.alloc(4096);
    auto base = guest.call<g::BufferGetBase>({buf});
    REQUIRE(base.code == 0);
    CHECK(base.reply.value != 0);

    add_round(guest, buf);

    // MUL_MAT: [2x2] x [2x1] (ggml: dst = b * a^T, rows of a against rows of b).
    g::RpcTensor m = f32({2, 2}, buf, 64), v = f32({2, 1}, buf, 96), o = f32({2, 1}, buf, 128);
    fill_blob(std::vector<float>{1, 2, 3, 4});
    REQUIRE(guest.set(buf, m, blob, 0, 16) == 0);
    fill_blob(std::vector<float>{1, 1});
    REQUIRE(guest.set(buf, v, blob, 0, 8) == 0);
    g::Graph mm;
    uint64_t im = mm.add(m), iv = mm.add(v);
    mm.add_node(o, static_cast<g::Op>(GGML_OP_MUL_MAT), {im, iv});
    REQUIRE(guest.compute(mm).code == 0);
    REQUIRE(guest.get(buf, o, blob, 0, 8) == 0);
    CHECK(read_blob(2) == std::vector<float>{3, 7});
}

TEST_CASE("handles are this context's own: forged ones are unknown, never dereferenced") {
    Guest guest(2);
    g::BufferHandle buf = guest.alloc(256);
    const g::BufferTypeHandle buft = guest.buft();
    std::vector<std::byte> reply;
    uint64_t forged[] = {0, 1, 0x4141414141414141ull, buf.value() + 1, buft.value()};
    for (uint64_t h : forged) {
        INFO("handle " << h);
        // As a buffer type (ggml's host dereferences it).
        std::byte req[16];
        std::memcpy(req, &h, 8);
        uint64_t size = 64;
        std::memcpy(req + 8, &size, 8);
        if (h != buft.value()) {
            CHECK(guest.raw(10, std::span(req, 8)) == unknown_handle);  // get_name
            CHECK(guest.raw(14, std::span(req, 16)) == unknown_handle); // alloc_buffer
        }
        // As a buffer.
        CHECK(guest.raw(16, std::span(req, 8)) == unknown_handle); // get_base
        CHECK(guest.raw(21, std::span(req, 8)) == unknown_handle); // free_buffer
    }
    // A buffer handle passed as a buffer type.
    std::byte req[8];
    uint64_t hv = buf.value();
    std::memcpy(req, &hv, 8);
    CHECK(guest.raw(11, std::span(req, 8)) == unknown_handle);
    // A freed buffer's handle is unknown from then on.
    REQUIRE(guest.call<g::BufferFreeBuffer>({buf}).code == 0);
    CHECK(guest.call<g::BufferGetBase>({buf}).code == unknown_handle);
    CHECK(guest.call<g::BufferFreeBuffer>({buf}).code == unknown_handle);
}

TEST_CASE("set/get: the tensor inside its buffer, the range inside the tensor and the blob") {
    Guest guest(3);
    g::BufferHandle a = guest.alloc(256), b = guest.alloc(256);
    fill_blob(std::vector<float>{1, 2, 3, 4});
    SECTION("a tensor with buffer 0: its offset is not an address") {
        g::RpcTensor t = f32({4}, {}, 0x7fff0000);
        CHECK(guest.set(a, t, blob, 0, 16) == bad_tensor);
        CHECK(guest.get(a, t, blob, 0, 16) == bad_tensor);
    }
    SECTION("a tensor of buffer A named in a call on buffer B (write-what-where)") {
        CHECK(guest.set(b, f32({4}, a, 0), blob, 0, 16) == bad_tensor);
    }
    SECTION("a tensor past its buffer's end") {
        CHECK(guest.set(a, f32({4}, a, 250), blob, 0, 16) == bad_tensor);
        CHECK(guest.set(a, f32({4}, a, ~uint64_t{0} - 4), blob, 0, 16) == bad_tensor);
        CHECK(guest.set(a, f32({0x40000000, 4}, a, 0), blob, 0, 16) == bad_tensor);
    }
    SECTION("offset and size past the tensor, and sizes that wrap") {
        g::RpcTensor t = f32({4}, a, 0);
        CHECK(guest.set(a, t, blob, 8, 16) == bad_range);
        CHECK(guest.get(a, t, blob, 17, 0) == bad_range);
        CHECK(guest.set(a, t, blob, ~uint64_t{0} - 7, 16) == bad_range);
        CHECK(guest.get(a, t, blob, 8, ~uint64_t{0} - 3) == bad_range);
    }
    SECTION("a blob range past the blob's end, and an unknown blob") {
        g::BufferHandle big = guest.alloc(uint64_t{1} << 20);
        g::RpcTensor t = f32({1 << 18}, big, 0);
        CHECK(guest.set(big, t, blob, 0, uint64_t{1} << 20) == bad_range); // blob: 64 KiB
        CHECK(guest.get(big, t, blob, 0, uint64_t{1} << 20) == bad_range);
        CHECK(guest.set(a, f32({4}, a, 0), 999, 0, 16) == bad_range);
    }
    SECTION("a tensor of an unknown type or inconsistent strides") {
        g::RpcTensor t = f32({4}, a, 0);
        t.type = 1000;
        CHECK(guest.set(a, t, blob, 0, 4) == bad_tensor);
        t = f32({4}, a, 0);
        t.nb[0] = 1; // narrower than an element
        CHECK(guest.set(a, t, blob, 0, 4) == bad_tensor);
        t = g::make_tensor(g::Type::q4_0, {30}).place(a, 0); // not whole blocks
        CHECK(guest.set(a, t, blob, 0, 4) == bad_tensor);
    }
    SECTION("a copy whose source has no buffer, or is larger than the destination") {
        auto r = guest.call<g::BufferCpyTensor>({b, f32({4}, {}, 0), f32({4}, b, 0)});
        CHECK(r.code == bad_tensor);
        r = guest.call<g::BufferCpyTensor>({b, f32({8}, a, 0), f32({4}, b, 0)});
        CHECK(r.code == bad_range);
        r = guest.call<g::BufferCpyTensor>({b, f32({4}, a, 0), f32({4}, b, 0)});
        CHECK(r.code == 0);
        CHECK(r.reply.value == 1);
    }
    SECTION("a copy between overlapping ranges of one buffer (memcpy's undefined case)") {
        // Found by fuzz-ggml-host: 8 floats copied 7 bytes further in the same buffer.
        auto r = guest.call<g::BufferCpyTensor>({b, f32({8}, b, 0), f32({8}, b, 28)});
        CHECK(r.code == bad_range);
        r = guest.call<g::BufferCpyTensor>({b, f32({8}, b, 28), f32({8}, b, 0)});
        CHECK(r.code == bad_range);
        r = guest.call<g::BufferCpyTensor>({b, f32({8}, b, 0), f32({8}, b, 0)}); // onto itself
        CHECK(r.code == 0);
        CHECK(r.reply.value == 1);
        r = guest.call<g::BufferCpyTensor>({b, f32({8}, b, 0), f32({8}, b, 32)}); // adjacent
        CHECK(r.code == 0);
        CHECK(r.reply.value == 1);
    }
    SECTION("a request cut short") {
        std::byte req[4] = {};
        CHECK(guest.raw(17, std::span(req, 4)) == bad_request);
        CHECK(guest.raw(22, std::span(req, 2)) == bad_request);
    }
}

TEST_CASE("graphs: counts, ids, references, ops and shapes are checked before ggml runs") {
    Guest guest(4);
    g::BufferHandle buf = guest.alloc(4096);
    g::RpcTensor a = f32({4}, buf, 0), b = f32({4}, buf, 16), c = f32({4}, buf, 32);
    a.id = 1, b.id = 2, c.id = 3;
    c.op = GGML_OP_ADD, c.src[0] = 1, c.src[1] = 2, c.flags = g::flag_compute;
    std::vector<g::RpcTensor> ts{a, b, c};
    std::vector<uint64_t> nodes{3};

    SECTION("the valid graph computes") {
        auto r = guest.compute(packed(1, nodes, 3, ts));
        CHECK(r.code == 0);
    }
    SECTION("node and tensor counts larger than the blob") {
        CHECK(guest.compute(packed(0x7fffffff, nodes, 3, ts)).code == bad_graph);
        CHECK(guest.compute(packed(1, nodes, 0x7fffffff, ts)).code == bad_graph);
        CHECK(guest.compute(packed(1, nodes, 4, ts)).code == bad_graph);
        CHECK(guest.compute(packed(0, {}, 3, ts)).code == bad_graph);
    }
    SECTION("id 0, a repeated id, an unknown source, an unknown node") {
        auto t = ts;
        t[0].id = 0;
        CHECK(guest.compute(packed(1, nodes, 3, t)).code == bad_graph);
        t = ts;
        t[1].id = 1;
        CHECK(guest.compute(packed(1, nodes, 3, t)).code == bad_graph);
        t = ts;
        t[2].src[1] = 77;
        CHECK(guest.compute(packed(1, nodes, 3, t)).code == bad_graph);
        std::vector<uint64_t> unknown{9};
        CHECK(guest.compute(packed(1, unknown, 3, ts)).code == bad_graph);
        std::vector<uint64_t> twice{3, 3};
        CHECK(guest.compute(packed(2, twice, 3, ts)).code == bad_graph);
    }
    SECTION("a type or op past ggml's enums") {
        auto t = ts;
        t[2].op = GGML_OP_COUNT + 5;
        CHECK(guest.compute(packed(1, nodes, 3, t)).code == bad_tensor);
        t = ts;
        t[0].type = GGML_TYPE_COUNT;
        CHECK(guest.compute(packed(1, nodes, 3, t)).code == bad_tensor);
    }
    SECTION("an op outside the checked table is refused, not computed") {
        auto t = ts;
        t[2].op = GGML_OP_CONV_TRANSPOSE_1D;
        CHECK(guest.compute(packed(1, nodes, 3, t)).code == unsupported_op);
    }
    SECTION("shapes ggml's kernels assert on") {
        auto t = ts;
        t[1] = f32({3}, buf, 16); // ADD: 3 does not repeat into 4
        t[1].id = 2;
        CHECK(guest.compute(packed(1, nodes, 3, t)).code == bad_tensor);
        t = ts; // MUL_MAT: ne0 of the operands differ (GGML_ASSERT(ne0 == ne01) in ggml)
        t[0] = f32({4, 2}, buf, 0), t[1] = f32({3, 1}, buf, 64), t[2] = f32({2, 1}, buf, 128);
        t[0].id = 1, t[1].id = 2, t[2].id = 3;
        t[2].op = GGML_OP_MUL_MAT, t[2].src[0] = 1, t[2].src[1] = 2;
        CHECK(guest.compute(packed(1, nodes, 3, t)).code == bad_tensor);
        t[1] = f32({4, 1}, buf, 64), t[1].id = 2;
        t[2].ne[0] = 3; // a destination of the wrong shape
        CHECK(guest.compute(packed(1, nodes, 3, t)).code == bad_tensor);
    }
    SECTION("a tensor of the graph with no buffer, or past its buffer") {
        auto t = ts;
        t[0].buffer = {};
        CHECK(guest.compute(packed(1, nodes, 3, t)).code == bad_tensor);
        t = ts;
        t[0].data = 4090;
        CHECK(guest.compute(packed(1, nodes, 3, t)).code == bad_tensor);
    }
    SECTION("a view outside its source") {
        auto t = ts;
        t[0].view_src = 2, t[0].view_offs = 8, t[0].data = 24; // 16 bytes from 8 in 16
        CHECK(guest.compute(packed(1, nodes, 3, t)).code == bad_tensor);
    }
    SECTION("a 300k-deep source chain is decoded without recursion") {
        constexpr uint32_t n = 300000;
        std::vector<g::RpcTensor> chain(n);
        for (uint32_t i = 0; i < n; ++i) {
            chain[i] = f32({4}, buf, 0);
            chain[i].id = i + 1;
            chain[i].src[0] = i; // 0 for the first: no source
            chain[i].op = i == 0 ? GGML_OP_NONE : GGML_OP_CONV_TRANSPOSE_1D;
        }
        std::vector<uint64_t> top{n};
        CHECK(guest.compute(packed(1, top, n, chain)).code == unsupported_op);
    }
    SECTION("GET_ROWS with a row index outside the source") {
        g::RpcTensor src = f32({2, 3}, buf, 0);
        g::RpcTensor idx = g::make_tensor(g::Type::i32, {2}).place(buf, 64);
        g::RpcTensor out = f32({2, 2}, buf, 128);
        src.id = 1, idx.id = 2, out.id = 3;
        out.op = GGML_OP_GET_ROWS, out.src[0] = 1, out.src[1] = 2, out.flags = g::flag_compute;
        std::vector<g::RpcTensor> t{src, idx, out};
        auto& bl = g_blobs[blob];
        bl.assign(64, std::byte{0});
        int32_t rows[2] = {2, 3}; // 3 is past the 3 rows
        std::memcpy(bl.data(), rows, 8);
        REQUIRE(guest.set(buf, idx, blob, 0, 8) == 0);
        CHECK(guest.compute(packed(1, nodes, 3, t)).code == bad_index);
        rows[1] = 0;
        std::memcpy(bl.data(), rows, 8);
        REQUIRE(guest.set(buf, idx, blob, 0, 8) == 0);
        CHECK(guest.compute(packed(1, nodes, 3, t)).code == 0);
    }
    // After every refusal the context goes on.
    CHECK(guest.compute(packed(1, nodes, 3, ts)).code == 0);
}

TEST_CASE("supports_op follows no pointer the guest sent") {
    Guest guest(5);
    std::vector<std::byte> req(sizeof(ggml_tensor) * 3);
    ggml_tensor t{};
    t.type = GGML_TYPE_F32;
    t.op = GGML_OP_ADD;
    for (int i = 0; i < 4; ++i) {
        t.ne[i] = 1;
        t.nb[i] = 4;
    }
    ggml_tensor src = t;
    src.op = GGML_OP_NONE;
    src.buffer = reinterpret_cast<ggml_backend_buffer*>(0x4141414141414141ull); // never read
    src.data = reinterpret_cast<void*>(0x4242424242424242ull);
    t.src[0] = t.src[1] = reinterpret_cast<ggml_tensor*>(0x10); // markers: the copies follow
    std::memcpy(req.data(), &t, sizeof t);
    std::memcpy(req.data() + sizeof t, &src, sizeof src);
    std::memcpy(req.data() + 2 * sizeof t, &src, sizeof src);
    std::vector<std::byte> reply;
    REQUIRE(guest.raw(6, req, &reply) == 0);
    REQUIRE(reply.size() == 4);
    CHECK(reply[0] == std::byte{1});
    // An op past the enum is not supported; a buffer marker with an unknown handle refused.
    t.op = static_cast<ggml_op>(GGML_OP_COUNT + 1);
    std::memcpy(req.data(), &t, sizeof t);
    REQUIRE(guest.raw(6, req, &reply) == 0);
    CHECK(reply[0] == std::byte{0});
    t.op = GGML_OP_ADD;
    t.buffer = reinterpret_cast<ggml_backend_buffer*>(0x1);
    std::vector<std::byte> with_buffer(sizeof t + 8 + 2 * sizeof t);
    std::memcpy(with_buffer.data(), &t, sizeof t);
    uint64_t forged = 0x4141414141414141ull;
    std::memcpy(with_buffer.data() + sizeof t, &forged, 8);
    CHECK(guest.raw(6, with_buffer) == unknown_handle);
    CHECK(guest.raw(6, std::span(req.data(), 100)) == bad_request);
}

TEST_CASE("device_buffer_from_ptr: a buffer over a blob, checked and freed") {
    Guest guest(6);
    g_blobs[60].assign(1 << 16, std::byte{0});
    auto r = guest.call<g::DeviceBufferFromPtr>({60, 1 << 16, 1 << 16});
    REQUIRE(r.code == 0);
    CHECK(r.reply.buffer_type == guest.buft());
    CHECK(guest.call<g::DeviceBufferFromPtr>({60, (1 << 16) + 1, 16}).code == bad_range);
    CHECK(guest.call<g::DeviceBufferFromPtr>({61, 16, 16}).code == bad_range);
    // Used, then the blob goes: the buffer is refused rather than used.
    fill_blob(std::vector<float>{5, 6, 7, 8});
    REQUIRE(guest.set(r.reply.buffer, f32({4}, r.reply.buffer, 0), blob, 0, 16) == 0);
    CHECK(std::memcmp(g_blobs[60].data(), g_blobs[blob].data(), 16) == 0);
    // Row indices in guest memory could change after the check: the kernel reads a
    // checked host copy.
    {
        g::BufferHandle own = guest.alloc(256);
        g::RpcTensor src = f32({2, 3}, own, 0);
        g::RpcTensor idx = g::make_tensor(g::Type::i32, {2}).place(r.reply.buffer, 64);
        g::RpcTensor out = f32({2, 2}, own, 128);
        src.id = 1, idx.id = 2, out.id = 3;
        out.op = GGML_OP_GET_ROWS, out.src[0] = 1, out.src[1] = 2, out.flags = g::flag_compute;
        std::vector<g::RpcTensor> t{src, idx, out};
        std::vector<uint64_t> nodes{3};
        int32_t rows[2] = {2, 0};
        std::memcpy(g_blobs[60].data() + 64, rows, 8);
        CHECK(guest.compute(packed(1, nodes, 3, t)).code == 0);
        rows[0] = 3; // past the 3 rows
        std::memcpy(g_blobs[60].data() + 64, rows, 8);
        CHECK(guest.compute(packed(1, nodes, 3, t)).code == bad_index);
        t[1].buffer = own;
        REQUIRE(guest.call<g::BufferClear>({own, 0}).code == 0); // indices 0
        CHECK(guest.compute(packed(1, nodes, 3, t)).code == 0);
    }
    // Two buffers over the same guest memory: a copy between them whose bytes overlap is
    // refused as one inside a buffer is (ggml copies with memcpy; found by a review).
    {
        auto twin = guest.call<g::DeviceBufferFromPtr>({60, 1 << 16, 1 << 16});
        REQUIRE(twin.code == 0);
        const g::BufferHandle a = r.reply.buffer, b = twin.reply.buffer;
        auto copy = [&](uint64_t to) {
            auto c = guest.call<g::BufferCpyTensor>({b, f32({64}, a, 0), f32({64}, b, to)});
            return c.code != 0 ? c.code : c.reply.value ? 0u : 99u;
        };
        CHECK(copy(16) == bad_range);
        CHECK(copy(0) == 0); // the same bytes: nothing to do
        CHECK(copy(4096) == 0);
        // So is a graph's node over a source in the other buffer's bytes.
        CHECK(one_node(guest, {f32({64}, a, 0)}, f32({64}, b, 4), GGML_OP_CONT) == bad_tensor);
        CHECK(one_node(guest, {f32({8, 2}, a, 0)}, f32({8, 2}, b, 4), GGML_OP_RMS_NORM,
                       {{0, f32_bits(1e-6f)}}) == bad_tensor);
        CHECK(one_node(guest, {f32({64}, a, 0)}, f32({64}, b, 4096), GGML_OP_CONT) == 0);
        CHECK(guest.call<g::BufferFreeBuffer>({b}).code == 0);
    }
    auto kept = std::move(g_blobs[60]);
    g_blobs.erase(60);
    CHECK(guest.set(r.reply.buffer, f32({4}, r.reply.buffer, 0), blob, 0, 16) == unknown_handle);
    g_blobs[60] = std::move(kept);
    // Freed the ggml way (ggml's host calls a null function here).
    CHECK(guest.call<g::BufferFreeBuffer>({r.reply.buffer}).code == 0);
    CHECK(guest.call<g::BufferGetBase>({r.reply.buffer}).code == unknown_handle);
}

TEST_CASE("the capability query: version 1, zero-copy buffers over ggml's CPU device") {
    Guest guest(7);
    auto r = guest.call<g::GetCapabilities>({});
    REQUIRE(r.code == 0);
    CHECK(r.reply.version == 1);
    CHECK(r.reply.flags == g::capability_zero_copy_buffers);
    // An id next to it is not one of this backend's.
    using Next = apir::Forward<g::capabilities_command + 1, apir::Empty>;
    CHECK(guest.call<Next>({}).code == apir::forward_invalid_index);
}

TEST_CASE("a failed LOADLIBRARY leaves a context that answers every FORWARD with a code") {
    g_config_path[7] = "/nonexistent/libggml-cpu.so";
    Guest guest(7);
    CHECK(guest.init_code == APIR_BACKEND_INIT_FAILED);
    for (uint32_t cmd = 0; cmd < g::command_count; ++cmd) {
        std::byte req[64] = {};
        CHECK(guest.raw(cmd, req) == not_initialized);
    }
    std::byte req[4] = {};
    CHECK(guest.raw(23, req) == APIR_FORWARD_INVALID_INDEX);
    g_config_path.erase(7);
}

TEST_CASE("two contexts are independent") {
    auto one = std::make_unique<Guest>(8);
    Guest two(9);
    g::BufferHandle b1 = one->alloc(64);
    g::BufferHandle b2 = two.alloc(64);
    CHECK(one->buft() != two.buft());
    CHECK(two.call<g::BufferGetBase>({b1}).code == unknown_handle);
    CHECK(one->call<g::BufferGetBase>({b2}).code == unknown_handle);
    CHECK(two.call<g::BufferTypeGetName>({one->buft()}).code == unknown_handle);
    one.reset(); // deinit of one leaves two working
    CHECK(two.call<g::BufferGetBase>({b2}).code == 0);
    g::Graph graph;
    g::RpcTensor a = f32({4}, b2, 0), c = f32({4}, b2, 16);
    uint64_t ia = graph.add(a);
    graph.add_node(c, static_cast<g::Op>(GGML_OP_ADD), {ia, ia});
    CHECK(two.compute(graph).code == 0);
}

TEST_CASE("a context holds at most its memory limit of buffers") {
    Guest guest(10); // ggml.host.max_memory = 1 MiB
    auto r = guest.call<g::BufferTypeAllocBuffer>({guest.buft(), uint64_t{0xbdbdbdbdbd}});
    REQUIRE(r.code == 0);
    CHECK(r.reply.buffer.is_null()); // the protocol's "allocation failed"
    g::BufferHandle a = guest.alloc(512 * 1024);
    r = guest.call<g::BufferTypeAllocBuffer>({guest.buft(), 600 * 1024});
    CHECK(r.reply.buffer.is_null());
    REQUIRE(guest.call<g::BufferFreeBuffer>({a}).code == 0);
    CHECK(!guest.alloc(600 * 1024).is_null());
}

TEST_CASE("input types ggml-cpu's kernels abort on are refused, and the context goes on") {
    Guest guest(11);
    g::BufferHandle buf = guest.alloc(128 * 1024);
    REQUIRE(guest.call<g::BufferClear>({buf, 0}).code == 0); // every index 0, in range
    constexpr uint64_t k = 16 * 1024;                        // tensors k apart
    const ggml_type no_kernel[] = {GGML_TYPE_I8,  GGML_TYPE_I16,  GGML_TYPE_I64,
                                   GGML_TYPE_F64, GGML_TYPE_Q8_1, GGML_TYPE_Q8_K};

    SECTION("MUL_MAT: src0 without a CPU vec_dot, src1 not F32 nor src0's float type") {
        const g::RpcTensor b = f32({256, 1}, buf, k), d = f32({2, 1}, buf, 2 * k);
        for (ggml_type t : no_kernel) {
            INFO("type " << static_cast<int>(t));
            CHECK(one_node(guest, {typed(t, {256, 2}, buf, 0), b}, d, GGML_OP_MUL_MAT) ==
                  bad_tensor);
        }
        CHECK(one_node(guest, {typed(GGML_TYPE_I32, {256, 2}, buf, 0), b}, d, GGML_OP_MUL_MAT) ==
              bad_tensor);
        CHECK(one_node(guest, {f32({256, 2}, buf, 0), typed(GGML_TYPE_F16, {256, 1}, buf, k)}, d,
                       GGML_OP_MUL_MAT) == bad_tensor);
        // What ggml-cpu computes still computes.
        CHECK(one_node(guest, {typed(GGML_TYPE_Q4_0, {256, 2}, buf, 0), b}, d, GGML_OP_MUL_MAT) ==
              0);
        CHECK(one_node(
                  guest,
                  {typed(GGML_TYPE_F16, {256, 2}, buf, 0), typed(GGML_TYPE_F16, {256, 1}, buf, k)},
                  d, GGML_OP_MUL_MAT) == 0);
    }
    SECTION("GET_ROWS: a source type get_rows has no case for") {
        const g::RpcTensor idx = typed(GGML_TYPE_I32, {2}, buf, k);
        const g::RpcTensor d = f32({256, 2}, buf, 2 * k);
        for (ggml_type t : no_kernel) {
            INFO("type " << static_cast<int>(t));
            CHECK(one_node(guest, {typed(t, {256, 4}, buf, 0), idx}, d, GGML_OP_GET_ROWS) ==
                  bad_tensor);
        }
        CHECK(one_node(guest, {typed(GGML_TYPE_Q4_0, {256, 4}, buf, 0), idx}, d,
                       GGML_OP_GET_ROWS) == 0);
    }
    SECTION("SET_ROWS: a destination type ggml-cpu cannot write") {
        const g::RpcTensor rows = f32({256, 2}, buf, 0);
        const g::RpcTensor idx = typed(GGML_TYPE_I64, {2}, buf, k);
        for (ggml_type t :
             {GGML_TYPE_I8, GGML_TYPE_I64, GGML_TYPE_F64, GGML_TYPE_IQ2_XXS, GGML_TYPE_IQ1_M}) {
            INFO("type " << static_cast<int>(t));
            CHECK(one_node(guest, {rows, idx}, typed(t, {256, 4}, buf, 2 * k), GGML_OP_SET_ROWS) ==
                  bad_tensor);
        }
        CHECK(one_node(guest, {rows, idx}, typed(GGML_TYPE_Q4_0, {256, 4}, buf, 2 * k),
                       GGML_OP_SET_ROWS) == 0);
    }
    SECTION("CPY: to a type with no from_float, from one with no to_float") {
        for (ggml_type t : {GGML_TYPE_IQ2_XXS, GGML_TYPE_IQ3_S, GGML_TYPE_IQ1_M}) {
            INFO("type " << static_cast<int>(t));
            const g::RpcTensor d = typed(t, {256, 2}, buf, 2 * k);
            CHECK(one_node(guest, {f32({256, 2}, buf, 0), d}, d, GGML_OP_CPY) == bad_tensor);
        }
        for (ggml_type t : {GGML_TYPE_Q8_1, GGML_TYPE_Q8_K}) {
            INFO("type " << static_cast<int>(t));
            const g::RpcTensor d = f32({256, 2}, buf, 2 * k);
            CHECK(one_node(guest, {typed(t, {256, 2}, buf, 0), d}, d, GGML_OP_CPY) == bad_tensor);
        }
        const g::RpcTensor d = f32({256, 2}, buf, 2 * k);
        CHECK(one_node(guest, {typed(GGML_TYPE_Q4_0, {256, 2}, buf, 0), d}, d, GGML_OP_CPY) == 0);
    }
    SECTION("GLU: SWIGLU_OAI on F16 (ggml-cpu has an F32 kernel only)") {
        const g::RpcTensor a = typed(GGML_TYPE_F16, {8, 2}, buf, 0);
        const g::RpcTensor d = typed(GGML_TYPE_F16, {4, 2}, buf, k);
        CHECK(one_node(guest, {a}, d, GGML_OP_GLU, {{0, GGML_GLU_OP_SWIGLU_OAI}}) == bad_tensor);
        CHECK(one_node(guest, {a}, d, GGML_OP_GLU, {{0, GGML_GLU_OP_SWIGLU}}) == 0);
    }
    SECTION("ROPE: M-RoPE sections negative, summing to 0, or past n_dims") {
        const g::RpcTensor a = f32({8, 2, 3}, buf, 0);
        const g::RpcTensor pos = typed(GGML_TYPE_I32, {12}, buf, k); // 4 per token
        const g::RpcTensor d = f32({8, 2, 3}, buf, 2 * k);
        auto rope = [&](int32_t s0, int32_t s1, int32_t s2, int32_t s3) {
            return one_node(guest, {a, pos}, d, GGML_OP_ROPE,
                            {{1, 8},
                             {2, GGML_ROPE_TYPE_MROPE},
                             {5, f32_bits(10000.0f)}, // freq_base
                             {6, f32_bits(1.0f)},     // freq_scale
                             {8, f32_bits(1.0f)},     // attn_factor
                             {11, s0},
                             {12, s1},
                             {13, s2},
                             {14, s3}});
        };
        CHECK(rope(-1, 3, 0, 0) == bad_tensor);
        CHECK(rope(0, 0, 0, 0) == bad_tensor);
        CHECK(rope(-1, 1, 0, 0) == bad_tensor);
        CHECK(rope(4, 4, 4, 0) == bad_tensor); // 12 > n_dims 8
        CHECK(rope(0, 0, 0, -2) == bad_tensor);
        CHECK(rope(0, 0, 0, 4) == bad_tensor); // ggml asserts one of the first three is set
        CHECK(rope(2, 1, 1, 0) == 0);
    }
    SECTION("ROPE: a mode ggml-cpu's rotation has no case for") {
        const g::RpcTensor a = f32({8, 2, 3}, buf, 0);
        const g::RpcTensor pos = typed(GGML_TYPE_I32, {3}, buf, k);
        const g::RpcTensor d = f32({8, 2, 3}, buf, 2 * k);
        auto rope = [&](int32_t mode) {
            return one_node(guest, {a, pos}, d, GGML_OP_ROPE,
                            {{1, 8},
                             {2, mode},
                             {5, f32_bits(10000.0f)},
                             {6, f32_bits(1.0f)},
                             {8, f32_bits(1.0f)}});
        };
        for (int32_t mode : {1, 4, 6, 16, 32, 64, -2}) {
            INFO("mode " << mode);
            CHECK(rope(mode) == bad_tensor);
        }
        CHECK(rope(GGML_ROPE_TYPE_NORMAL) == 0);
        CHECK(rope(GGML_ROPE_TYPE_NEOX) == 0);
    }
    SECTION("a copy onto its own source, a row op writing over its indices or rows, any "
            "op over its source") {
        const g::RpcTensor src = f32({8}, buf, 0);
        const g::RpcTensor shifted = f32({8}, buf, 4); // one float on: the ranges overlap
        for (ggml_op op : {GGML_OP_CPY, GGML_OP_DUP, GGML_OP_CONT}) {
            INFO("op " << static_cast<int>(op));
            std::vector<g::RpcTensor> srcs{src};
            if (op == GGML_OP_CPY) srcs.push_back(shifted);
            CHECK(one_node(guest, srcs, shifted, op) == bad_tensor);
            std::vector<g::RpcTensor> apart{src};
            const g::RpcTensor far = f32({8}, buf, k);
            if (op == GGML_OP_CPY) apart.push_back(far);
            CHECK(one_node(guest, apart, far, op) == 0);
        }
        const g::RpcTensor table = f32({4, 4}, buf, 0);
        const g::RpcTensor idx = typed(GGML_TYPE_I32, {2}, buf, 2 * k);
        CHECK(one_node(guest, {table, idx}, f32({4, 2}, buf, 2 * k - 16), GGML_OP_GET_ROWS) ==
              bad_tensor); // its last row is the indices
        CHECK(one_node(guest, {table, idx}, f32({4, 2}, buf, 16), GGML_OP_GET_ROWS) ==
              bad_tensor); // inside the table
        CHECK(one_node(guest, {table, idx}, f32({4, 2}, buf, k), GGML_OP_GET_ROWS) == 0);
        const g::RpcTensor rows = f32({4, 2}, buf, 0);
        const g::RpcTensor idx64 = typed(GGML_TYPE_I64, {2}, buf, 2 * k);
        CHECK(one_node(guest, {rows, idx64}, f32({4, 4}, buf, 2 * k - 32), GGML_OP_SET_ROWS) ==
              bad_tensor);
        CHECK(one_node(guest, {rows, idx64}, f32({4, 4}, buf, k), GGML_OP_SET_ROWS) == 0);
        // Any other op over its source, unless exactly in place (the same data and layout,
        // as ggml's allocator places a node over its parent): RMS_NORM copies each row
        // before scaling it (found by fuzz-ggml-host), ADD, SCALE, UNARY.
        const g::RpcTensor row = f32({8, 2}, buf, 0), row_on = f32({8, 2}, buf, 4);
        CHECK(one_node(guest, {row}, row_on, GGML_OP_RMS_NORM, {{0, f32_bits(1e-6f)}}) ==
              bad_tensor);
        CHECK(one_node(guest, {row}, row, GGML_OP_RMS_NORM, {{0, f32_bits(1e-6f)}}) == 0);
        g::RpcTensor spread = row; // the same data, its second row 16 bytes further on
        spread.nb[1] = 48, spread.nb[2] = spread.nb[3] = 96;
        CHECK(one_node(guest, {row, f32({8}, buf, k)}, spread, GGML_OP_ADD) == bad_tensor);
        CHECK(one_node(guest, {row}, row, GGML_OP_SCALE, {{0, f32_bits(2.0f)}}) == 0);
        CHECK(one_node(guest, {row, f32({8}, buf, k)}, row_on, GGML_OP_ADD) == bad_tensor);
        CHECK(one_node(guest, {row, f32({8}, buf, k)}, row, GGML_OP_ADD) == 0);
        CHECK(one_node(guest, {row}, row_on, GGML_OP_UNARY, {{0, GGML_UNARY_OP_SILU}}) ==
              bad_tensor);
        CHECK(one_node(guest, {row}, row, GGML_OP_UNARY, {{0, GGML_UNARY_OP_SILU}}) == 0);
    }
    SECTION("RMS_NORM, NORM: an epsilon below 0 or NaN (ggml asserts eps >= 0)") {
        const g::RpcTensor a = f32({8, 2}, buf, 0), d = f32({8, 2}, buf, k);
        auto norm = [&](ggml_op op, float eps) {
            return one_node(guest, {a}, d, op, {{0, f32_bits(eps)}});
        };
        for (ggml_op op : {GGML_OP_RMS_NORM, GGML_OP_NORM}) {
            INFO("op " << static_cast<int>(op));
            CHECK(norm(op, -1e-6f) == bad_tensor);
            CHECK(norm(op, std::numeric_limits<float>::quiet_NaN()) == bad_tensor);
            CHECK(norm(op, 1e-6f) == 0);
            CHECK(norm(op, 0.0f) == 0);
        }
    }
    SECTION("a graph whose work buffer ggml-cpu would size past 1 GiB (found by a review)") {
        // MUL_MAT over 2^30 elements of src1 that all sit in one row (zero strides):
        // ggml-cpu plans 2 GiB to convert them to F16, and a failed allocation leaves it
        // holding a freed buffer.
        g::RpcTensor a = typed(GGML_TYPE_F16, {256, 2}, buf, 0);
        g::RpcTensor b = f32({256, 4096, 1024}, buf, k);
        b.nb[1] = b.nb[2] = b.nb[3] = 0;
        g::RpcTensor d = f32({2, 4096, 1024}, buf, 2 * k);
        d.nb[1] = d.nb[2] = d.nb[3] = 4;
        CHECK(one_node(guest, {a, b}, d, GGML_OP_MUL_MAT) == no_memory);
        // The same product over 64 rows: 32 KiB of work.
        CHECK(one_node(guest, {a, f32({256, 64}, buf, k)}, f32({2, 64}, buf, 5 * k),
                       GGML_OP_MUL_MAT) == 0);
    }
    SECTION("SCALE: a source or destination that is not contiguous (ggml asserts both are)") {
        const g::RpcTensor a = f32({8, 2}, buf, 0), d = f32({8, 2}, buf, k);
        g::RpcTensor gappy = f32({8, 2}, buf, 2 * k);
        gappy.nb[1] = 64; // rows 64 bytes apart: 32 unused bytes after each
        gappy.nb[2] = gappy.nb[3] = 128;
        CHECK(one_node(guest, {gappy}, d, GGML_OP_SCALE) == bad_tensor);
        CHECK(one_node(guest, {a}, gappy, GGML_OP_SCALE) == bad_tensor);
        CHECK(one_node(guest, {a}, d, GGML_OP_SCALE) == 0);
    }
    SECTION("SCALE: rows walked as one run, a dimension of 1 with a stride of its own "
            "(found by a review: ggml_is_contiguous lets it be anything)") {
        g::RpcTensor d = f32({8, 1, 4}, buf, k);
        d.nb[1] = 2048; // row i at i * nb1 in the kernel: 6 KiB past a 128-byte tensor
        CHECK(one_node(guest, {f32({8, 1, 4}, buf, 0)}, d, GGML_OP_SCALE) == bad_tensor);
        g::RpcTensor a = f32({8, 1, 4}, buf, 0);
        a.nb[1] = 2048;
        CHECK(one_node(guest, {a}, f32({8, 1, 4}, buf, k), GGML_OP_SCALE) == bad_tensor);
        CHECK(one_node(guest, {f32({8, 1, 4}, buf, 0)}, f32({8, 1, 4}, buf, k), GGML_OP_SCALE) ==
              0);
    }
    SECTION("copies into and out of quantized types: the shapes and strides ggml-cpu's "
            "kernels take them by (found by a review)") {
        // Into Q8_0 a source row at a time, through a work row of the destination's length.
        const g::RpcTensor q8 = typed(GGML_TYPE_Q8_0, {32, 128}, buf, 2 * k);
        CHECK(one_node(guest, {f32({4096}, buf, 0), q8}, q8, GGML_OP_CPY) == bad_tensor);
        const g::RpcTensor q8_rows = typed(GGML_TYPE_Q8_0, {256, 2}, buf, 2 * k);
        CHECK(one_node(guest, {f32({256, 2}, buf, 0), q8_rows}, q8_rows, GGML_OP_CPY) == 0);
        // IQ4_NL, IQ4_XS: rows of whole blocks in the destination, not in the source
        // (ggml asserts, and aborts).
        for (auto [t, blck] :
             {std::pair{GGML_TYPE_IQ4_NL, 32u}, std::pair{GGML_TYPE_IQ4_XS, 256u}}) {
            INFO("type " << static_cast<int>(t));
            const g::RpcTensor dq = typed(t, {blck, 16}, buf, 2 * k);
            CHECK(one_node(guest, {f32({16, blck}, buf, 0), dq}, dq, GGML_OP_CPY) == bad_tensor);
            CHECK(one_node(guest, {f32({blck, 16}, buf, 0), dq}, dq, GGML_OP_CPY) == 0);
        }
        // Out of Q4_0 by src[1]'s strides, which must be the node's own.
        const g::RpcTensor q4 = typed(GGML_TYPE_Q4_0, {32, 4}, buf, 0);
        const g::RpcTensor out = f32({32, 4}, buf, 2 * k);
        g::RpcTensor wide = out;
        wide.nb[1] = 1024, wide.nb[2] = wide.nb[3] = 4096;
        CHECK(one_node(guest, {q4, wide}, out, GGML_OP_CPY) == bad_tensor);
        CHECK(one_node(guest, {q4, out}, out, GGML_OP_CPY) == 0);
        // DUP and CONT have no src[1], which ggml-cpu's dequantizing copy follows.
        CHECK(one_node(guest, {q4}, out, GGML_OP_DUP) == bad_tensor);
        CHECK(one_node(guest, {q4}, out, GGML_OP_CONT) == bad_tensor);
        // Into a quantized type, CONT gets no work row from ggml-cpu's planner (found by a
        // review: a write through a null pointer); DUP does.
        CHECK(one_node(guest, {f32({256, 2}, buf, 0)}, q8_rows, GGML_OP_CONT) == bad_tensor);
        CHECK(one_node(guest, {f32({256, 2}, buf, 0)}, q8_rows, GGML_OP_DUP) == 0);
    }
    SECTION("ROPE: rows of an odd length; frequency factors read past the buffer (found by a "
            "review: the kernel reads one per pair of the whole row)") {
        const g::RpcTensor pos = typed(GGML_TYPE_I32, {3}, buf, k);
        // factors: the frequency factors' tensor (src[2]), if any.
        auto rope = [&](uint32_t ne0, uint32_t n_dims, std::optional<g::RpcTensor> factors) {
            std::vector<g::RpcTensor> srcs{f32({ne0, 2, 3}, buf, 0), pos};
            if (factors) srcs.push_back(*factors);
            return one_node(guest, srcs, f32({ne0, 2, 3}, buf, 2 * k), GGML_OP_ROPE,
                            {{1, int32_t(n_dims)},
                             {2, GGML_ROPE_TYPE_NEOX},
                             {5, f32_bits(10000.0f)},
                             {6, f32_bits(1.0f)},
                             {8, f32_bits(1.0f)}});
        };
        CHECK(rope(9, 8, std::nullopt) == bad_tensor);
        CHECK(rope(10, 8, std::nullopt) == 0);
        // ggml asserts n_dims / 2 factors, the kernel reads ne0 / 2: past the tensor, inside
        // the buffer is the guest's own memory (ggml's own tests do it), past the buffer not.
        CHECK(rope(8, 2, f32({1}, buf, 3 * k)) == 0);
        CHECK(rope(8, 2, f32({0}, buf, 3 * k)) == bad_tensor);
        const g::RpcTensor last_float = f32({1}, buf, 128 * 1024 - 4);
        CHECK(rope(2, 2, last_float) == 0);          // one factor read, the buffer's last float
        CHECK(rope(8, 2, last_float) == bad_tensor); // four read, three past the buffer
    }
    SECTION("GET_ROWS: a row of 3,000 indices, read in runs, each index checked") {
        constexpr uint32_t n = 3000; // 12,000 bytes: past one 4 KiB run of the check
        const g::RpcTensor idx = typed(GGML_TYPE_I32, {n}, buf, 0);
        auto& bl = g_blobs[blob];
        auto with_last = [&](int32_t last) {
            std::vector<int32_t> v(n, 1);
            v.back() = last;
            bl.assign(n * 4, std::byte{0});
            std::memcpy(bl.data(), v.data(), n * 4);
            REQUIRE(guest.set(buf, idx, blob, 0, n * 4) == 0);
            return one_node(guest, {f32({4, 2}, buf, k), idx}, f32({4, n}, buf, k + 64),
                            GGML_OP_GET_ROWS);
        };
        CHECK(with_last(2) == bad_index); // the table has 2 rows
        CHECK(with_last(-1) == bad_index);
        CHECK(with_last(1) == 0);
    }
    // After every refusal the context goes on.
    const g::RpcTensor b = f32({4}, buf, 0), c = f32({4}, buf, k);
    CHECK(one_node(guest, {b, b}, c, GGML_OP_ADD) == 0);
}

TEST_CASE("buffer slots are reused, and a freed buffer's handle stays unknown") {
    Guest guest(12); // ggml.host.max_buffers = 4
    std::vector<g::BufferHandle> held{guest.alloc(64), guest.alloc(64), guest.alloc(64)};
    g::BufferHandle stale = guest.alloc(64);
    REQUIRE(guest.call<g::BufferFreeBuffer>({stale}).code == 0);
    // Many more allocations than slots, each freed: every one is given a slot.
    for (int i = 0; i < 64; ++i) {
        g::BufferHandle h = guest.alloc(64);
        CHECK(h != stale); // the same slot, a new generation
        CHECK(guest.call<g::BufferGetBase>({stale}).code == unknown_handle);
        CHECK(guest.call<g::BufferGetBase>({h}).code == 0);
        REQUIRE(guest.call<g::BufferFreeBuffer>({h}).code == 0);
        CHECK(guest.call<g::BufferFreeBuffer>({h}).code == unknown_handle);
    }
    CHECK(guest.call<g::BufferFreeBuffer>({stale}).code == unknown_handle);
    // The bound still holds: four buffers at once, not five.
    held.push_back(guest.alloc(64));
    auto r = guest.call<g::BufferTypeAllocBuffer>({guest.buft(), 64});
    REQUIRE(r.code == 0);
    CHECK(r.reply.buffer.is_null());
    for (g::BufferHandle h : held)
        CHECK(guest.call<g::BufferGetBase>({h}).code == 0);
}

TEST_CASE("graph reuse: the same bytes run the graph built before, on the data of the day") {
    auto guest = std::make_unique<Guest>(13); // ggml.host.graph_cache = 4
    g::BufferHandle buf = guest->alloc(4096);
    const auto graph = add_graph(buf, 32);
    // Built once, then run again on new inputs: each run computes the inputs it finds.
    for (float k = 1; k <= 5; ++k) {
        INFO("run " << k);
        CHECK(add_with(*guest, buf, graph, 32, {k, 2 * k, 3 * k, 4 * k}, {10, 20, 30, 40}) ==
              std::vector<float>{10 + k, 20 + 2 * k, 30 + 3 * k, 40 + 4 * k});
    }
    // Five other graphs (their output elsewhere): four are kept, the least recently used
    // goes, so the first graph is built again and the last one is reused.
    for (uint64_t i = 1; i <= 5; ++i)
        CHECK(add_with(*guest, buf, add_graph(buf, 32 + 16 * i), 32 + 16 * i, {1, 1, 1, 1},
                       {1, 2, 3, 4}) == std::vector<float>{2, 3, 4, 5});
    CHECK(add_with(*guest, buf, graph, 32, {0, 0, 0, 0}, {1, 2, 3, 4}) ==
          std::vector<float>{1, 2, 3, 4});
    CHECK(add_with(*guest, buf, add_graph(buf, 112), 112, {2, 2, 2, 2}, {1, 2, 3, 4}) ==
          std::vector<float>{3, 4, 5, 6});
    // 5 + 5 + 1 + 1 computes; reused: the 4 repeats of the first graph and the last one.
    CHECK(close_and_count(guest) == "12 graphs computed, 5 of them reused");
}

TEST_CASE("graph reuse: row indices and buffers are checked again on every run") {
    auto guest = std::make_unique<Guest>(13);
    g::BufferHandle own = guest->alloc(4096);
    g_blobs[62].assign(4096, std::byte{0});
    auto shared = guest->call<g::DeviceBufferFromPtr>({62, 4096, 4096});
    REQUIRE(shared.code == 0);
    const g::BufferHandle guest_mem = shared.reply.buffer;
    // GET_ROWS of a 2x3 table, indices in the host's buffer or in guest memory.
    fill_blob(std::vector<float>{1, 2, 3, 4, 5, 6});
    REQUIRE(guest->set(own, f32({2, 3}, own, 0), blob, 0, 24) == 0);
    for (g::BufferHandle where : {own, guest_mem}) {
        INFO((where == own ? "indices in the host's buffer" : "indices in guest memory"));
        g::Graph graph;
        const g::RpcTensor idx = g::make_tensor(g::Type::i32, {2}).place(where, 256);
        uint64_t it = graph.add(f32({2, 3}, own, 0)), ii = graph.add(idx);
        graph.add_node(f32({2, 2}, own, 512), static_cast<g::Op>(GGML_OP_GET_ROWS), {it, ii});
        std::vector<std::byte> bytes(graph.encoded_size());
        REQUIRE(graph.encode(bytes));
        auto rows = [&](int32_t r0, int32_t r1) {
            const int32_t v[2] = {r0, r1};
            if (where == own) {
                g_blobs[blob].assign(64, std::byte{0});
                std::memcpy(g_blobs[blob].data(), v, 8);
                REQUIRE(guest->set(own, idx, blob, 0, 8) == 0);
            } else {
                std::memcpy(g_blobs[62].data() + 256, v, 8);
            }
            return guest->compute(bytes).code;
        };
        auto out = [&] {
            REQUIRE(guest->get(own, f32({2, 2}, own, 512), blob, 0, 16) == 0);
            return read_blob(4);
        };
        REQUIRE(rows(2, 0) == 0);
        CHECK(out() == std::vector<float>{5, 6, 1, 2});
        CHECK(rows(1, 3) == bad_index); // 3 is past the table's 3 rows
        CHECK(rows(-1, 0) == bad_index);
        REQUIRE(rows(1, 1) == 0);
        CHECK(out() == std::vector<float>{3, 4, 3, 4});
    }
    // The guest's memory moves (its blob replaced): the kept graph is not run over the old
    // memory, nor built again over the new one (the buffer is not at its place).
    {
        g::Graph graph;
        uint64_t ia = graph.add(f32({4}, guest_mem, 0)), ib = graph.add(f32({4}, guest_mem, 16));
        graph.add_node(f32({4}, guest_mem, 32), static_cast<g::Op>(GGML_OP_ADD), {ia, ib});
        std::vector<std::byte> bytes(graph.encoded_size());
        REQUIRE(graph.encode(bytes));
        REQUIRE(guest->compute(bytes).code == 0);
        REQUIRE(guest->compute(bytes).code == 0);
        Blob moved(4096);
        g_blobs[62].swap(moved);
        CHECK(guest->compute(bytes).code == unknown_handle);
        g_blobs[62].swap(moved);
        CHECK(guest->compute(bytes).code == 0);
    }
    // A freed buffer: its graph is refused, even when a new buffer takes its slot.
    {
        g::BufferHandle gone = guest->alloc(4096);
        const auto graph = add_graph(gone, 32);
        CHECK(add_with(*guest, gone, graph, 32, {1, 1, 1, 1}, {2, 2, 2, 2}) ==
              std::vector<float>{3, 3, 3, 3});
        REQUIRE(guest->call<g::BufferFreeBuffer>({gone}).code == 0);
        CHECK(guest->compute(graph).code == unknown_handle);
        g::BufferHandle next = guest->alloc(4096);
        CHECK(next != gone);
        CHECK(guest->compute(graph).code == unknown_handle);
    }
    // Rows: 4 + 4 computes, 3 + 3 reused. Moved memory: 4 computes, the second reused (the
    // third found the graph but not its buffer, dropped it, and its build failed; the
    // fourth built it again). Freed: 3 computes, none reused.
    CHECK(close_and_count(guest) == "15 graphs computed, 7 of them reused");
}

TEST_CASE("threads chosen per graph: a graph computed again is timed, a fixed count is not") {
    // Context 16: ggml.cpu.threads unset. On two CPUs or more the 4-float ADD's work asks
    // for one thread and its tuner (thread_tuner.hpp) tries two as well; each result is
    // the same, and the closing line counts the runs timed (all but the first).
    cpu_set_t set;
    CPU_ZERO(&set);
    REQUIRE(sched_getaffinity(0, sizeof set, &set) == 0);
    const int cpus = CPU_COUNT(&set);
    auto guest = std::make_unique<Guest>(16);
    add_rounds(*guest, guest->alloc(4096), 20);
    const std::string log = stderr_of([&] { guest.reset(); });
    CHECK(log.find("context closed: 20 graphs computed, 19 of them reused") != std::string::npos);
    if (cpus >= 2) {
        CHECK(log.find("thread floors: 19 runs timed") != std::string::npos);
        // The tuner's first measurement (one thread: an untimed run and 3 timed ones; two
        // threads: 2 untimed and 3 timed) is done within 20 runs.
        CHECK(log.find(", 0 measurements") == std::string::npos);
    } else {
        WARN("one CPU: no thread count to choose, the tuner is not made");
        CHECK(log.find("thread floors") == std::string::npos);
    }
    // A fixed count (every other context: ggml.cpu.threads=1) times nothing.
    auto fixed = std::make_unique<Guest>(1);
    add_rounds(*fixed, fixed->alloc(4096), 5);
    CHECK(stderr_of([&] { fixed.reset(); }).find("thread floors") == std::string::npos);
}

TEST_CASE("graph reuse off (ggml.host.graph_cache=0): every compute builds its graph") {
    auto guest = std::make_unique<Guest>(14);
    add_rounds(*guest, guest->alloc(4096), 3);
    CHECK(close_and_count(guest) == "3 graphs computed, 0 of them reused");
    Guest bad(15); // more than 1024 graphs
    CHECK(bad.init_code == APIR_BACKEND_INIT_FAILED);
}

TEST_CASE("graph reuse: indices a node of the graph computes are checked after it, each run") {
    auto guest = std::make_unique<Guest>(13);
    g::BufferHandle own = guest->alloc(4096);
    // Node 1 gathers a row of an I32 table: the indices of node 2, which gathers rows of a
    // float table. Node 2's indices exist only once node 1 has run.
    const g::RpcTensor values = f32({2, 3}, own, 0);
    const g::RpcTensor table = g::make_tensor(g::Type::i32, {2, 3}).place(own, 64);
    const g::RpcTensor pick = g::make_tensor(g::Type::i32, {1}).place(own, 128);
    g::Graph graph;
    uint64_t iv = graph.add(values), it = graph.add(table), ip = graph.add(pick);
    uint64_t rows = graph.add_node(g::make_tensor(g::Type::i32, {2, 1}).place(own, 192),
                                   static_cast<g::Op>(GGML_OP_GET_ROWS), {it, ip});
    graph.add_node(f32({2, 2, 1}, own, 256), static_cast<g::Op>(GGML_OP_GET_ROWS), {iv, rows});
    std::vector<std::byte> bytes(graph.encoded_size());
    REQUIRE(graph.encode(bytes));
    fill_blob(std::vector<float>{1, 2, 3, 4, 5, 6});
    REQUIRE(guest->set(own, values, blob, 0, 24) == 0);
    const int32_t t[6] = {2, 0, 1, 1, 0, 5}; // row 2 names row 5 of 3
    g_blobs[blob].assign(64, std::byte{0});
    std::memcpy(g_blobs[blob].data(), t, sizeof t);
    REQUIRE(guest->set(own, table, blob, 0, sizeof t) == 0);
    auto run = [&](int32_t row) {
        g_blobs[blob].assign(64, std::byte{0});
        std::memcpy(g_blobs[blob].data(), &row, 4);
        REQUIRE(guest->set(own, pick, blob, 0, 4) == 0);
        return guest->compute(bytes).code;
    };
    auto out = [&] {
        REQUIRE(guest->get(own, f32({4}, own, 256), blob, 0, 16) == 0);
        return read_blob(4);
    };
    REQUIRE(run(0) == 0);
    CHECK(out() == std::vector<float>{5, 6, 1, 2}); // rows 2 and 0
    REQUIRE(run(1) == 0);
    CHECK(out() == std::vector<float>{3, 4, 3, 4}); // rows 1 and 1
    CHECK(run(2) == bad_index);                     // node 1 gave row 5
    CHECK(run(3) == bad_index);                     // node 1's own index is past its table
    REQUIRE(run(0) == 0);
    CHECK(out() == std::vector<float>{5, 6, 1, 2});
    CHECK(close_and_count(guest) == "5 graphs computed, 4 of them reused");
}

namespace {

/// The half-precision bits of a float that F16 holds exactly (0, ±inf, or a normal number
/// with at most 11 significant bits); the attention test uses no other.
uint16_t half_bits(float f) {
    const auto u = std::bit_cast<uint32_t>(f);
    const auto sign = static_cast<uint16_t>((u >> 16) & 0x8000);
    if ((u & 0x7fffffff) == 0) return sign;
    if (std::isinf(f)) return sign | 0x7c00;
    const int exp = static_cast<int>((u >> 23) & 0xff) - 127 + 15;
    REQUIRE(exp > 0);
    REQUIRE(exp < 31);
    REQUIRE((u & 0x1fff) == 0); // no bits lost
    return sign | static_cast<uint16_t>(exp << 10) | static_cast<uint16_t>((u >> 13) & 0x3ff);
}

/// Attention as ggml defines FLASH_ATTN_EXT, in double: for each query row i and head h,
/// softmax over the keys of scale * q.k + mask (and the head's sink in the denominator),
/// times v; k and v heads broadcast to q's. Output [dv, heads, rows], as ggml lays it out.
std::vector<float> attention(const std::vector<float>& q, const std::vector<float>& k,
                             const std::vector<float>& v, const std::vector<float>& mask,
                             const std::vector<float>& sinks, int d, int rows, int heads, int keys,
                             int kv_heads, float scale) {
    std::vector<float> out(static_cast<size_t>(d * heads * rows));
    for (int i = 0; i < rows; ++i)
        for (int h = 0; h < heads; ++h) {
            const int kh = h / (heads / kv_heads);
            std::vector<double> s(static_cast<size_t>(keys));
            double top = -INFINITY;
            for (int j = 0; j < keys; ++j) {
                double dot = 0;
                for (int x = 0; x < d; ++x)
                    dot += double{q[static_cast<size_t>((h * rows + i) * d + x)]} *
                           k[static_cast<size_t>((kh * keys + j) * d + x)];
                s[static_cast<size_t>(j)] = scale * dot + mask[static_cast<size_t>(i * keys + j)];
                top = std::max(top, s[static_cast<size_t>(j)]);
            }
            if (!sinks.empty()) top = std::max(top, double{sinks[static_cast<size_t>(h)]});
            double sum = sinks.empty() ? 0 : std::exp(sinks[static_cast<size_t>(h)] - top);
            for (double& e : s)
                sum += (e = std::exp(e - top));
            for (int x = 0; x < d; ++x) {
                double acc = 0;
                for (int j = 0; j < keys; ++j)
                    acc +=
                        s[static_cast<size_t>(j)] * v[static_cast<size_t>((kh * keys + j) * d + x)];
                out[static_cast<size_t>((i * heads + h) * d + x)] = static_cast<float>(acc / sum);
            }
        }
    return out;
}

} // namespace

TEST_CASE("FLASH_ATTN_EXT: ggml's attention, on shapes its CPU kernels can run") {
    Guest guest(16);
    g::BufferHandle buf = guest.alloc(64 * 1024);
    // 3 query rows of 4 heads against 5 keys of 2 heads (each shared by 2 query heads),
    // 8 values a row, one batch; the mask hides the keys past row i + 2.
    constexpr int d = 8, rows = 3, heads = 4, keys = 5, kv_heads = 2;
    constexpr float scale = 0.25f;
    std::vector<float> q(d * rows * heads), k(d * keys * kv_heads), v(k.size());
    for (size_t i = 0; i < q.size(); ++i)
        q[i] = static_cast<float>(static_cast<int>(i % 7) - 3) / 4;
    for (size_t i = 0; i < k.size(); ++i) {
        k[i] = static_cast<float>(static_cast<int>(i % 5) - 2) / 2;
        v[i] = static_cast<float>(static_cast<int>(i % 11) - 5) / 8;
    }
    std::vector<float> mask(rows * keys);
    for (int i = 0; i < rows; ++i)
        for (int j = 0; j < keys; ++j)
            mask[static_cast<size_t>(i * keys + j)] = j > i + 2 ? -INFINITY : 0.0f;
    const std::vector<float> sinks{0.5f, -1.0f, 0.0f, 2.0f};

    // Every tensor 4 KiB from the next; the data goes in through the blob.
    auto upload = [&](const g::RpcTensor& t, std::span<const std::byte> bytes) {
        auto& bl = g_blobs[blob];
        bl.assign(1 << 16, std::byte{0});
        std::memcpy(bl.data(), bytes.data(), bytes.size());
        REQUIRE(guest.set(buf, t, blob, 0, bytes.size()) == 0);
    };
    auto halves = [](const std::vector<float>& f) {
        std::vector<uint16_t> h(f.size());
        for (size_t i = 0; i < f.size(); ++i)
            h[i] = half_bits(f[i]);
        return h;
    };
    const g::RpcTensor tq = f32({d, rows, heads}, buf, 0);
    const g::RpcTensor tk = f32({d, keys, kv_heads}, buf, 4096);
    const g::RpcTensor tv = f32({d, keys, kv_heads}, buf, 8192);
    const g::RpcTensor hk = typed(GGML_TYPE_F16, {d, keys, kv_heads}, buf, 12288);
    const g::RpcTensor hv = typed(GGML_TYPE_F16, {d, keys, kv_heads}, buf, 16384);
    const g::RpcTensor tm = typed(GGML_TYPE_F16, {keys, rows}, buf, 20480);
    const g::RpcTensor ts = f32({heads}, buf, 24576);
    const g::RpcTensor out = f32({d, heads, rows}, buf, 28672);
    upload(tq, std::as_bytes(std::span(q)));
    upload(tk, std::as_bytes(std::span(k)));
    upload(tv, std::as_bytes(std::span(v)));
    const auto k16 = halves(k), v16 = halves(v), m16 = halves(mask);
    upload(hk, std::as_bytes(std::span(k16)));
    upload(hv, std::as_bytes(std::span(v16)));
    upload(tm, std::as_bytes(std::span(m16)));
    upload(ts, std::as_bytes(std::span(sinks)));

    const std::initializer_list<std::pair<int, int32_t>> params{{0, f32_bits(scale)}};
    auto result = [&] {
        REQUIRE(guest.get(buf, out, blob, 0, d * heads * rows * 4) == 0);
        return read_blob(d * heads * rows);
    };
    auto near = [](const std::vector<float>& got, const std::vector<float>& want) {
        REQUIRE(got.size() == want.size());
        for (size_t i = 0; i < got.size(); ++i) {
            INFO("element " << i);
            CHECK(std::abs(got[i] - want[i]) <= 1e-3f * (1 + std::abs(want[i])));
        }
    };

    SECTION("F32 and F16 keys and values, with and without sinks") {
        const auto plain = attention(q, k, v, mask, {}, d, rows, heads, keys, kv_heads, scale);
        const auto sunk = attention(q, k, v, mask, sinks, d, rows, heads, keys, kv_heads, scale);
        REQUIRE(one_node(guest, {tq, tk, tv, tm}, out, GGML_OP_FLASH_ATTN_EXT, params) == 0);
        near(result(), plain);
        REQUIRE(one_node(guest, {tq, hk, hv, tm}, out, GGML_OP_FLASH_ATTN_EXT, params) == 0);
        near(result(), plain);
        REQUIRE(one_node(guest, {tq, hk, hv, tm, ts}, out, GGML_OP_FLASH_ATTN_EXT, params) == 0);
        near(result(), sunk);
        // GGML_PREC_F32 (what llama.cpp sets) computes the same.
        REQUIRE(one_node(guest, {tq, hk, hv, tm}, out, GGML_OP_FLASH_ATTN_EXT,
                         {{0, f32_bits(scale)}, {3, GGML_PREC_F32}}) == 0);
        near(result(), plain);
    }
    SECTION("shapes and types the kernels would read or write past, or abort on") {
        auto fa = [&](std::vector<g::RpcTensor> srcs, g::RpcTensor o,
                      std::initializer_list<std::pair<int, int32_t>> p = {}) {
            return one_node(guest, std::move(srcs), o, GGML_OP_FLASH_ATTN_EXT,
                            p.size() ? p : params);
        };
        // The output's rows and heads swapped: written at indices past it.
        CHECK(fa({tq, hk, hv, tm}, f32({d, rows, heads}, buf, 28672)) == bad_tensor);
        // An output with gaps between its rows.
        g::RpcTensor gappy = out;
        gappy.nb[1] = 64, gappy.nb[2] = 64 * heads, gappy.nb[3] = 64 * heads * rows;
        CHECK(fa({tq, hk, hv, tm}, gappy) == bad_tensor);
        // q of F16: read as F32 rows, twice their bytes.
        CHECK(fa({typed(GGML_TYPE_F16, {d, rows, heads}, buf, 0), hk, hv, tm}, out) == bad_tensor);
        // A query head count that k's (or v's) heads do not divide: 3 key heads.
        CHECK(fa({tq, typed(GGML_TYPE_F16, {d, 1, 3}, buf, 12288), hv, tm}, out) == bad_tensor);
        CHECK(fa({tq, hk, typed(GGML_TYPE_F16, {d, keys, 3}, buf, 16384), tm}, out) == bad_tensor);
        // Fewer value rows than keys.
        CHECK(fa({tq, hk, typed(GGML_TYPE_F16, {d, keys - 1, kv_heads}, buf, 16384), tm}, out) ==
              bad_tensor);
        // A key row length other than q's.
        CHECK(fa({tq, typed(GGML_TYPE_F16, {d / 2, keys, kv_heads}, buf, 12288), hv, tm}, out) ==
              bad_tensor);
        // Keys whose rows all sit at one address: a million of them in 16 bytes.
        g::RpcTensor zero = hk;
        zero.ne[1] = 1 << 20, zero.nb[1] = 0, zero.nb[2] = 0, zero.nb[3] = 0;
        g::RpcTensor zero_v = hv;
        zero_v.ne[1] = 1 << 20, zero_v.nb[1] = 0, zero_v.nb[2] = 0, zero_v.nb[3] = 0;
        CHECK(fa({tq, zero, zero_v}, out) == bad_tensor);
        // The mask: F32, too few columns for the keys, too few rows for the queries, 0 heads.
        CHECK(fa({tq, hk, hv, f32({keys, rows}, buf, 20480)}, out) == bad_tensor);
        CHECK(fa({tq, hk, hv, typed(GGML_TYPE_F16, {keys - 1, rows}, buf, 20480)}, out) ==
              bad_tensor);
        CHECK(fa({tq, hk, hv, typed(GGML_TYPE_F16, {keys, rows - 1}, buf, 20480)}, out) ==
              bad_tensor);
        CHECK(fa({tq, hk, hv, typed(GGML_TYPE_F16, {keys, rows, 0}, buf, 20480)}, out) ==
              bad_tensor);
        // Sinks: one per query head, F32.
        CHECK(fa({tq, hk, hv, tm, f32({heads - 1}, buf, 24576)}, out) == bad_tensor);
        CHECK(fa({tq, hk, hv, tm, typed(GGML_TYPE_F16, {heads}, buf, 24576)}, out) == bad_tensor);
        // A precision ggml-cpu has no case for; ALiBi (max_bias > 0) without a mask.
        CHECK(fa({tq, hk, hv, tm}, out, {{0, f32_bits(scale)}, {3, 5}}) == bad_tensor);
        CHECK(fa({tq, hk, hv}, out, {{0, f32_bits(scale)}, {1, f32_bits(8.0f)}}) == bad_tensor);
        // Key types the CPU cannot read.
        CHECK(fa({tq, typed(GGML_TYPE_I32, {d, keys, kv_heads}, buf, 12288), hv, tm}, out) ==
              bad_tensor);
        // ggml-cpu sizes its work buffer from the head sizes and the head count, even for
        // an empty node it skips (found by a review): an empty node with heads of 2^31
        // floats (1.5 TB planned), one of 2^32 - 1 heads (34 GB), a head past 4096.
        {
            const uint32_t dk = 0x7fffff00, dv = 0x3fffff00;
            g::RpcTensor eq = f32({dk, 0, 1, 1}, buf, 0), ek = typed(GGML_TYPE_F16, {1}, buf, 0);
            ek.ne[0] = dk, ek.ne[1] = 0, ek.nb[1] = ek.nb[2] = ek.nb[3] = 2 * dk;
            g::RpcTensor ev = ek;
            ev.ne[0] = dv, ev.nb[1] = ev.nb[2] = ev.nb[3] = 2 * dv;
            g::RpcTensor eo = f32({dv, 1, 0, 1}, buf, 0);
            CHECK(fa({eq, ek, ev}, eo) == bad_tensor);
            g::RpcTensor hq = f32({1, 0, 0xffffffff, 1}, buf, 0);
            hq.nb[1] = hq.nb[2] = hq.nb[3] = 4;
            g::RpcTensor hk = f32({1, 0, 1, 1}, buf, 0), hv = f32({0, 0, 1, 1}, buf, 0);
            g::RpcTensor ho = f32({0, 0xffffffff, 0, 1}, buf, 0);
            CHECK(fa({hq, hk, hv}, ho) == bad_tensor);
            CHECK(fa({f32({4104, 1}, buf, 0), f32({4104, 1}, buf, 0), f32({8, 1}, buf, 40000)},
                     f32({8, 1}, buf, 60000)) == bad_tensor);
        }
        // Without a mask and with ALiBi and a mask: ggml computes both.
        CHECK(fa({tq, hk, hv}, out) == 0);
        CHECK(fa({tq, hk, hv, tm}, out, {{0, f32_bits(scale)}, {1, f32_bits(8.0f)}}) == 0);
    }
    // After every refusal the context goes on, and computes the right thing.
    REQUIRE(one_node(guest, {tq, tk, tv, tm}, out, GGML_OP_FLASH_ATTN_EXT, params) == 0);
    near(result(), attention(q, k, v, mask, {}, d, rows, heads, keys, kv_heads, scale));
}
