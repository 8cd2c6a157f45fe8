// A test backend that exports apir_backend_initialize but no dispatcher: the host
// must answer LOADLIBRARY with "symbol missing" (5) without calling initialize.
#include <apir/backend_abi.h>

#include <atomic>

namespace {
std::atomic<int> g_initialized{0};
}

APIR_BACKEND_ENTRY uint32_t apir_backend_initialize(uint32_t, virgl_apir_callbacks*) {
    g_initialized.fetch_add(1);
    return APIR_BACKEND_INIT_OK;
}

APIR_BACKEND_ENTRY int missing_symbol_backend_initialized() {
    return g_initialized.load();
}
