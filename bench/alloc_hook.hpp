// Counts heap allocations made through operator new, process-wide and per thread.
// alloc_hook.cpp replaces the global operator new/delete of the program it is linked
// into; shared objects loaded into that program (the host's backend library) use the
// replacement too.
#pragma once

#include <cstdint>

namespace apir_bench {

struct AllocCount {
    uint64_t allocs = 0; ///< calls of any operator new
    uint64_t bytes = 0;  ///< bytes those calls asked for
};

/// Bytes allocated through operator new and not yet freed (the allocator's usable
/// sizes), every thread.
[[nodiscard]] uint64_t live_heap_bytes() noexcept;

/// Allocations of every thread so far.
[[nodiscard]] AllocCount process_allocs() noexcept;
/// Allocations of the calling thread so far.
[[nodiscard]] AllocCount thread_allocs() noexcept;

} // namespace apir_bench
