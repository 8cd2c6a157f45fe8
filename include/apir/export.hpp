// What every public C++ header of apir needs first: the C++20 check and APIR_EXPORT.
//
// apir is compiled with hidden visibility. APIR_EXPORT marks the compiled entry points
// (the classes and functions defined in libapir) that the shared library exports; the
// rest of the library stays internal (APIR_EXPORT_BEGIN/END mark all of a header, as
// for apir/ggml/) (APIR_LOCAL marks the private parts of exported
// classes, their Impl). APIR_STATIC is defined when the static library is compiled and
// by its consumers (Meson's and CMake's apir dependencies define it for them): it
// leaves APIR_EXPORT empty, so every symbol of libapir.a is hidden and a shared module
// that links it statically does not re-export apir. Consumers of the shared library
// define nothing.
#pragma once

#if !defined(__cplusplus) || __cplusplus < 202002L
// A missing include is a fatal error: the compiler stops here, so this message is the
// only error a consumer sees (an #error would be followed by a hundred more).
#include "apir needs C++20: compile with -std=c++20 (Meson: cpp_std=c++20; CMake: cxx_std_20)"
#endif

#if defined(__GNUC__) || defined(__clang__)
#define APIR_LOCAL __attribute__((visibility("hidden")))
#else
#define APIR_LOCAL
#endif

#if defined(APIR_STATIC)
#define APIR_EXPORT
#define APIR_EXPORT_BEGIN
#define APIR_EXPORT_END
#elif defined(__GNUC__) || defined(__clang__)
#define APIR_EXPORT __attribute__((visibility("default")))
// A whole header's declarations at once (after its #includes).
#define APIR_EXPORT_BEGIN _Pragma("GCC visibility push(default)")
#define APIR_EXPORT_END _Pragma("GCC visibility pop")
#else
#define APIR_EXPORT
#define APIR_EXPORT_BEGIN
#define APIR_EXPORT_END
#endif
