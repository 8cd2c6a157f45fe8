// A test backend that exports apir_backend_initialize but no dispatcher: the host
// must answer LOADLIBRARY with "symbol missing" (5) without calling initialize.
#include <apir/backend_abi.h>

#include <atomic>

namespace {
std::atomic<int> g_initialized{0};
}

extern "C" {

__attribute__((visibility("default"))) uint32_t apir_backend_initialize(uint32_t,
                                                                        virgl_apir_callbacks*) {
    g_initialized.fetch_add(1);
    return 6;
}

__attribute__((visibility("default"))) int missing_symbol_backend_initialized() {
    return g_initialized.load();
}
}
