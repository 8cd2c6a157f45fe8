// libggml-apir: a ggml backend whose device is a host's ggml device reached over APIR.
//
// Loaded by ggml as an out-of-tree backend (ggml_backend_load("libggml-apir.so") or
// GGML_BACKEND_PATH=/path/libggml-apir.so), it connects as the environment says
// (docs/GGML-BACKEND.md) and registers one device, "APIR0". A fork that links the
// backend in calls ggml_backend_apir_reg() and registers it itself.
#pragma once

#include "ggml-backend.h"

#ifdef __cplusplus
extern "C" {
#endif

/// The process-wide registration, connected from the environment on first use.
/// Never null: when the connection fails it has no device (the reason is logged).
GGML_BACKEND_API ggml_backend_reg_t ggml_backend_apir_reg(void);

/// True when dev is a device of libggml-apir.
GGML_BACKEND_API bool ggml_backend_dev_is_apir(ggml_backend_dev_t dev);

#ifdef __cplusplus
}
#endif
