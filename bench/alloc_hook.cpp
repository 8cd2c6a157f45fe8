// Replacement global operator new/delete that count what they are asked for.
#include "alloc_hook.hpp"

#include <atomic>
#include <cstdlib>
#include <malloc.h>
#include <new>

namespace apir_bench {
namespace {

std::atomic<uint64_t> g_allocs{0};
std::atomic<uint64_t> g_bytes{0};
std::atomic<uint64_t> g_live{0};
thread_local AllocCount t_count; // trivially constructed: safe in any thread, any time

void count(size_t n) noexcept {
    g_allocs.fetch_add(1, std::memory_order_relaxed);
    g_bytes.fetch_add(n, std::memory_order_relaxed);
    ++t_count.allocs;
    t_count.bytes += n;
}

void* tracked(void* p) noexcept {
    if (p) g_live.fetch_add(malloc_usable_size(p), std::memory_order_relaxed);
    return p;
}

void* allocate(size_t n) noexcept {
    count(n);
    return tracked(std::malloc(n ? n : 1));
}

void* allocate_aligned(size_t n, std::align_val_t al) noexcept {
    count(n);
    auto a = static_cast<size_t>(al);
    if (a < sizeof(void*)) a = sizeof(void*);
    void* p = nullptr;
    return posix_memalign(&p, a, n ? n : 1) == 0 ? tracked(p) : nullptr;
}

void release(void* p) noexcept {
    if (p) g_live.fetch_sub(malloc_usable_size(p), std::memory_order_relaxed);
    std::free(p);
}

} // namespace

uint64_t live_heap_bytes() noexcept {
    return g_live.load(std::memory_order_relaxed);
}

AllocCount process_allocs() noexcept {
    return {g_allocs.load(std::memory_order_relaxed), g_bytes.load(std::memory_order_relaxed)};
}
AllocCount thread_allocs() noexcept {
    return t_count;
}

} // namespace apir_bench

using apir_bench::allocate;
using apir_bench::allocate_aligned;
using apir_bench::release;

void* operator new(size_t n) {
    if (void* p = allocate(n)) return p;
    throw std::bad_alloc();
}
void* operator new[](size_t n) {
    if (void* p = allocate(n)) return p;
    throw std::bad_alloc();
}
void* operator new(size_t n, const std::nothrow_t&) noexcept {
    return allocate(n);
}
void* operator new[](size_t n, const std::nothrow_t&) noexcept {
    return allocate(n);
}
void* operator new(size_t n, std::align_val_t al) {
    if (void* p = allocate_aligned(n, al)) return p;
    throw std::bad_alloc();
}
void* operator new[](size_t n, std::align_val_t al) {
    if (void* p = allocate_aligned(n, al)) return p;
    throw std::bad_alloc();
}
void* operator new(size_t n, std::align_val_t al, const std::nothrow_t&) noexcept {
    return allocate_aligned(n, al);
}
void* operator new[](size_t n, std::align_val_t al, const std::nothrow_t&) noexcept {
    return allocate_aligned(n, al);
}

void operator delete(void* p) noexcept {
    release(p);
}
void operator delete[](void* p) noexcept {
    release(p);
}
void operator delete(void* p, size_t) noexcept {
    release(p);
}
void operator delete[](void* p, size_t) noexcept {
    release(p);
}
void operator delete(void* p, const std::nothrow_t&) noexcept {
    release(p);
}
void operator delete[](void* p, const std::nothrow_t&) noexcept {
    release(p);
}
void operator delete(void* p, std::align_val_t) noexcept {
    release(p);
}
void operator delete[](void* p, std::align_val_t) noexcept {
    release(p);
}
void operator delete(void* p, size_t, std::align_val_t) noexcept {
    release(p);
}
void operator delete[](void* p, size_t, std::align_val_t) noexcept {
    release(p);
}
void operator delete(void* p, std::align_val_t, const std::nothrow_t&) noexcept {
    release(p);
}
void operator delete[](void* p, std::align_val_t, const std::nothrow_t&) noexcept {
    release(p);
}
