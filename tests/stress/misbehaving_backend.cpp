// A test backend that misbehaves on request, to show what the host and the guest make
// of it. FORWARD command ids:
//   0  return the payload's first uint32 as the function's result (every error level)
//   1  report a reply end past the reply region (nothing is written there)
//   2  report a reply end before the reply region
//   3  write a reply filling the region to its last byte, and report it exactly
//   4  answer with the payload's own bytes (a reply exactly as long as the request)
#include <apir/backend_abi.h>

#include <cstdint>
#include <cstring>

namespace {
// A pointer outside the region, made without pointer arithmetic past the object.
char* beside(const char* p, intptr_t delta) {
    return reinterpret_cast<char*>(reinterpret_cast<uintptr_t>(p) + static_cast<uintptr_t>(delta));
}
} // namespace

APIR_BACKEND_ENTRY uint32_t apir_backend_initialize(uint32_t, virgl_apir_callbacks*) {
    return APIR_BACKEND_INIT_OK;
}

APIR_BACKEND_ENTRY void apir_backend_deinit(uint32_t) {}

APIR_BACKEND_ENTRY uint32_t apir_backend_dispatcher(uint32_t, virgl_apir_callbacks*, uint32_t cmd,
                                                    char* dec_cur, const char* dec_end,
                                                    char* enc_cur, const char* enc_end,
                                                    char** enc_cur_after) {
    *enc_cur_after = enc_cur;
    switch (cmd) {
    case 0: {
        uint32_t ret = 0;
        if (dec_end - dec_cur >= 4) std::memcpy(&ret, dec_cur, 4);
        return ret;
    }
    case 1:
        *enc_cur_after = beside(enc_end, 64);
        return 0;
    case 2:
        *enc_cur_after = beside(enc_cur, -8);
        return 0;
    case 3:
        std::memset(enc_cur, 0x5a, static_cast<size_t>(enc_end - enc_cur));
        *enc_cur_after = const_cast<char*>(enc_end);
        return 0;
    case 4: {
        const size_t n = static_cast<size_t>(dec_end - dec_cur);
        if (n > static_cast<size_t>(enc_end - enc_cur)) return 1;
        if (n) std::memcpy(enc_cur, dec_cur, n);
        *enc_cur_after = enc_cur + n;
        return 0;
    }
    default:
        return APIR_FORWARD_INVALID_INDEX;
    }
}
