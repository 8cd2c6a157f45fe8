// Compiled with NDEBUG defined, beside test_session_api.cpp (compiled without it): the
// public templates must have one layout whatever a translation unit says about NDEBUG.
#ifndef NDEBUG
#define NDEBUG 1
#endif
#include <apir/ggml/client.hpp>
#include <apir/loopback.hpp>
#include <apir/session.hpp>

#include <cstddef>

std::size_t session_size_with_ndebug() {
    return sizeof(apir::Session<apir::LoopbackTransport>);
}
std::size_t ggml_device_size_with_ndebug() {
    return sizeof(apir::ggml::Device<apir::LoopbackTransport>);
}
