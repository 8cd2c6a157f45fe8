/* The C ABI between an APIR host and an APIR backend library.
 *
 * A backend library is a shared object exporting the three functions below; the host
 * dlopens it on LOADLIBRARY. This header is C and C++ so that backends can be
 * written in either. Layouts match the virtio-gpu renderer's APIR component.
 */
#ifndef APIR_BACKEND_ABI_H
#define APIR_BACKEND_ABI_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Services the host offers a backend, in this order. */
struct virgl_apir_callbacks {
    /* Value of a host configuration key, or NULL. Valid while the context lives. */
    const char* (*get_config)(uint32_t ctx_id, const char* key);
    /* Mapping of a shared-memory resource, or NULL when the id is unknown. */
    void* (*get_shmem_ptr)(uint32_t ctx_id, uint32_t res_id);
};

/* Returns a LOADLIBRARY code: 6 + a backend initialization code (6 = success),
 * or 3/4/5 when the backend could not open what it wraps. 0 is success too. */
typedef uint32_t (*apir_backend_initialize_fn)(uint32_t ctx_id, struct virgl_apir_callbacks* cbs);
typedef void (*apir_backend_deinit_fn)(uint32_t ctx_id);
/* Decodes [dec_cur, dec_end), encodes the reply into [enc_cur, enc_end), stores the
 * end of what it wrote in *enc_cur_after, and returns the function's result (0 ok). */
typedef uint32_t (*apir_backend_dispatcher_fn)(uint32_t ctx_id, struct virgl_apir_callbacks* cbs,
                                               uint32_t cmd_type, char* dec_cur,
                                               const char* dec_end, char* enc_cur,
                                               const char* enc_end, char** enc_cur_after);

/* Optional, an extension of this project: a checked shared-memory look-up that also
 * reports the resource's size (get_shmem_ptr gives no size, so a backend cannot
 * bounds-check). A host that knows this symbol calls it before initialize. */
typedef void* (*apir_get_shmem_sized_fn)(uint32_t ctx_id, uint32_t res_id, uint64_t* size);
typedef void (*apir_backend_set_shmem_sized_fn)(uint32_t ctx_id, apir_get_shmem_sized_fn fn);

/* Marks a backend library's entry points: C linkage, exported from a library built with
 * hidden visibility. */
#ifdef __cplusplus
#define APIR_BACKEND_ENTRY extern "C" __attribute__((visibility("default")))
#else
#define APIR_BACKEND_ENTRY __attribute__((visibility("default")))
#endif

/* Named results (apir/backend.hpp has them as constants): apir_backend_initialize's
 * success (the LOADLIBRARY base index 6 + the backend's code 0) and failure (6 + 5,
 * "backend failed"); the dispatcher's result for a command id it does not know. */
#define APIR_BACKEND_INIT_OK 6u
#define APIR_BACKEND_INIT_FAILED 11u
#define APIR_FORWARD_INVALID_INDEX 6u

#define APIR_BACKEND_INITIALIZE_SYMBOL "apir_backend_initialize"
#define APIR_BACKEND_DEINIT_SYMBOL "apir_backend_deinit"
#define APIR_BACKEND_DISPATCHER_SYMBOL "apir_backend_dispatcher"
#define APIR_BACKEND_SET_SHMEM_SIZED_SYMBOL "apir_backend_set_shmem_sized"

#ifdef __cplusplus
}
#endif

#endif /* APIR_BACKEND_ABI_H */
