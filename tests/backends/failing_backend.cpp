// A test backend whose apir_backend_initialize returns whatever the host
// configuration key "test.init_result" says (a decimal number; default 6 = success).
// It lets the tests drive every LOADLIBRARY outcome a backend can produce.
#include <apir/backend_abi.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>

namespace {
std::atomic<int> g_deinit_calls{0};
}

APIR_BACKEND_ENTRY uint32_t apir_backend_initialize(uint32_t ctx_id, virgl_apir_callbacks* cbs) {
    const char* v = cbs && cbs->get_config ? cbs->get_config(ctx_id, "test.init_result") : nullptr;
    return v ? static_cast<uint32_t>(std::strtoul(v, nullptr, 10)) : APIR_BACKEND_INIT_OK;
}

APIR_BACKEND_ENTRY void apir_backend_deinit(uint32_t) {
    g_deinit_calls.fetch_add(1);
}

/// For the tests: how many times the host ran deinit.
APIR_BACKEND_ENTRY int failing_backend_deinit_calls() {
    return g_deinit_calls.load();
}

/// Command 1 answers where the host handed it the request to decode (the address, 8
/// bytes): the tests tell a copy from the command's own bytes. Every other command
/// answers nothing.
APIR_BACKEND_ENTRY uint32_t apir_backend_dispatcher(uint32_t, virgl_apir_callbacks*, uint32_t cmd,
                                                    char* dec, const char*, char* enc_cur,
                                                    const char* enc_end, char** enc_cur_after) {
    *enc_cur_after = enc_cur;
    if (cmd == 1 && enc_end - enc_cur >= 8) {
        const auto where = reinterpret_cast<uintptr_t>(dec);
        std::memcpy(enc_cur, &where, 8);
        *enc_cur_after = enc_cur + 8;
    }
    return 0;
}
