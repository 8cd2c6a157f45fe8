// Fuzz target: libggml-apir-host's dispatcher fed guest messages, over ggml's real CPU device.
//
// Each input runs on a fresh context (initialize ... deinit) whose host offers the sized
// blob look-up. Before the input's records the harness allocates two buffers (4 KiB and
// 64 KiB), so that requests can name live objects: in every request and blob record the
// 8-byte tokens "AAIPBUF0", "AAIPBUF1" and "AAIPBUFT" are replaced by the two buffers'
// handles and the buffer type's handle (handles are random per context).
//
// Input: a list of records, each uint8 kind, uint16 little-endian length, that many bytes:
//   kind % 4 == 0..1: FORWARD of command (next byte % 24; 23 is apir's capability query)
//                     with the rest as its request;
//   kind % 4 == 2:    the bytes go to the start of blob 3 (64 KiB: graphs, transfers);
//   kind % 4 == 3:    the bytes go to the start of blob 4 (4 KiB, for buffer_from_ptr).
// Blobs are exact-size, page-aligned heap blocks: ASan sees a byte past one.
//
// Needs ggml's CPU backend: APIR_GGML_PEER_DIR/lib/libggml-cpu.so.0 (the seeds: a build's
// fuzz-ggml-host-seeds writes one input per command, and valid tensors and graphs).
#include <apir/backend_abi.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string>

extern "C" {
uint32_t apir_backend_initialize(uint32_t, virgl_apir_callbacks*);
void apir_backend_deinit(uint32_t);
uint32_t apir_backend_dispatcher(uint32_t, virgl_apir_callbacks*, uint32_t, char*, const char*,
                                 char*, const char*, char**);
void apir_backend_set_shmem_sized(uint32_t, apir_get_shmem_sized_fn);
}

namespace {

struct Blob {
    std::byte* data = nullptr;
    size_t size = 0;
};
Blob g_blob3, g_blob4;
std::string g_cpu_lib;

Blob make_blob(size_t n) {
    return {static_cast<std::byte*>(::operator new (n, std::align_val_t{4096})), n};
}

const char* get_config(uint32_t, const char* key) {
    if (std::strcmp(key, "ggml.library.path") == 0) return g_cpu_lib.c_str();
    if (std::strcmp(key, "ggml.library.reg") == 0) return "ggml_backend_cpu_reg";
    if (std::strcmp(key, "ggml.cpu.threads") == 0) return "1";
    if (std::strcmp(key, "ggml.host.max_memory") == 0) return "268435456";
    return nullptr;
}
void* get_shmem(uint32_t, uint32_t res) {
    return res == 3 ? g_blob3.data : res == 4 ? g_blob4.data : nullptr;
}
void* get_shmem_sized(uint32_t, uint32_t res, uint64_t* size) {
    const Blob* b = res == 3 ? &g_blob3 : res == 4 ? &g_blob4 : nullptr;
    if (!b) return nullptr;
    *size = b->size;
    return b->data;
}
virgl_apir_callbacks g_callbacks{&get_config, &get_shmem};

constexpr uint32_t ctx = 1;

uint32_t dispatch(uint32_t cmd, std::byte* req, size_t n, char* out, size_t out_size, char** end) {
    return apir_backend_dispatcher(ctx, &g_callbacks, cmd, reinterpret_cast<char*>(req),
                                   reinterpret_cast<char*>(req) + n, out, out + out_size, end);
}

uint64_t g_handles[3]; // BUF0, BUF1, BUFT of the current context

void substitute(std::byte* p, size_t n) {
    static const char* const tokens[3] = {"AAIPBUF0", "AAIPBUF1", "AAIPBUFT"};
    for (size_t i = 0; i + 8 <= n; ++i)
        for (int k = 0; k < 3; ++k)
            if (std::memcmp(p + i, tokens[k], 8) == 0) std::memcpy(p + i, &g_handles[k], 8);
}

} // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    const char* peer = std::getenv("APIR_GGML_PEER_DIR");
    if (!peer || !*peer) {
        std::fprintf(stderr, "fuzz-ggml-host: APIR_GGML_PEER_DIR is not set (ggml's CPU "
                             "backend is needed)\n");
        std::exit(77);
    }
    g_cpu_lib = std::string(peer) + "/lib/libggml-cpu.so.0";
    g_blob3 = make_blob(64 * 1024);
    g_blob4 = make_blob(4096);
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    std::memset(g_blob3.data, 0, g_blob3.size);
    std::memset(g_blob4.data, 0, g_blob4.size);
    apir_backend_set_shmem_sized(ctx, &get_shmem_sized);
    if (apir_backend_initialize(ctx, &g_callbacks) != APIR_BACKEND_INIT_OK) std::abort();

    static char out[1 << 16];
    char* end = nullptr;
    // The buffer type, then the two buffers.
    std::byte none[4] = {};
    if (dispatch(7, none, 0, out, sizeof out, &end) != 0) std::abort();
    std::memcpy(&g_handles[2], out, 8);
    const uint64_t sizes[2] = {4096, 65536};
    for (int i = 0; i < 2; ++i) {
        std::byte req[16];
        std::memcpy(req, &g_handles[2], 8);
        std::memcpy(req + 8, &sizes[i], 8);
        if (dispatch(14, req, 16, out, sizeof out, &end) != 0) std::abort();
        std::memcpy(&g_handles[i], out, 8);
    }

    size_t at = 0;
    while (at + 3 <= size) {
        const uint8_t kind = data[at];
        size_t n = data[at + 1] | (size_t{data[at + 2]} << 8);
        at += 3;
        if (n > size - at) n = size - at;
        // An exact-size copy: a read past the request is an ASan report.
        std::byte* rec = static_cast<std::byte*>(::operator new(n ? n : 1));
        std::memcpy(rec, data + at, n);
        at += n;
        substitute(rec, n);
        switch (kind % 4) {
        case 0:
        case 1:
            if (n >= 1) {
                // 0..22: ggml's commands; 23: apir's capability query (0x41504952).
                uint32_t cmd = static_cast<uint32_t>(rec[0]) % 24;
                if (cmd == 23) cmd = 0x41504952;
                static_cast<void>(dispatch(cmd, rec + 1, n - 1, out, sizeof out, &end));
                if (end < out || end > out + sizeof out) std::abort();
            }
            break;
        case 2:
            std::memcpy(g_blob3.data, rec, n < g_blob3.size ? n : g_blob3.size);
            break;
        default:
            std::memcpy(g_blob4.data, rec, n < g_blob4.size ? n : g_blob4.size);
            break;
        }
        ::operator delete(rec);
    }
    apir_backend_deinit(ctx);
    return 0;
}
