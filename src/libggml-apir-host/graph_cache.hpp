// Graphs the host backend built, kept for the next compute of the same bytes
// (docs/GGML-HOST.md, "Graph reuse"). A guest that computes the same graph again (a
// token of a language model after the last: the same nodes, shapes and places, new
// data) sends the same packed bytes; the host then skips decoding them, checking every
// tensor and asking the device about every op, and runs the graph it built before.
// What depends on the data (the row indices of GET_ROWS and SET_ROWS) and on the buffers
// (still there, still in the same memory) is checked again on every run.
#pragma once

#include "thread_tuner.hpp"

#include <ggml-backend.h>
#include <ggml.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <span>
#include <vector>

namespace apir::ggml_host {

/// A packed graph decoded, checked and made into ggml tensors in an arena of its own.
struct BuiltGraph {
    BuiltGraph() = default;
    BuiltGraph(const BuiltGraph&) = delete;
    BuiltGraph& operator=(const BuiltGraph&) = delete;
    ~BuiltGraph() {
        if (ctx) ggml_free(ctx);
    }

    /// The packed bytes it was built from (a copy: the guest may change its blob).
    std::vector<std::byte> bytes;
    std::unique_ptr<std::byte[]> arena;
    ggml_context* ctx = nullptr;
    ggml_cgraph* graph = nullptr; ///< room for every node; filled per run
    std::vector<ggml_tensor*> nodes;

    /// A buffer the graph's tensors live in, as it was when the graph was built.
    struct BufferUse {
        uint64_t handle = 0;
        ggml_backend_buffer_t buffer = nullptr;
        const char* base = nullptr;
    };
    std::vector<BufferUse> buffers; ///< each once

    /// A node that indexes rows by the values of a tensor (index_rule in checks.hpp),
    /// whose values are checked before it runs.
    struct IndexCheck {
        size_t node = 0;             ///< its place in nodes
        bool run_before = false;     ///< the nodes before it write its indices: run them first
        int64_t rows = 0;            ///< every index below this
        ggml_tensor* copy = nullptr; ///< indices in guest memory: the host copy the node reads
        const ggml_tensor* source = nullptr; ///< what the copy is made from
        std::unique_ptr<std::byte[]> copy_memory;
    };
    std::vector<IndexCheck> index_checks; ///< in node order
    size_t arena_size = 0;
    size_t copy_bytes = 0; ///< of the index copies
    uint64_t last_use = 0;

    /// Its thread floor, chosen by timing its runs (thread_tuner.hpp); made after the
    /// first run, which finds the least work-based thread count of its parts.
    ThreadTuner tuner;
    bool tuner_made = false;
    int least_threads = INT32_MAX;

    /// The host memory it holds, about.
    [[nodiscard]] size_t footprint() const noexcept {
        return bytes.size() + arena_size + copy_bytes + nodes.size() * sizeof(ggml_tensor*);
    }
};

/// The graphs a context built most recently, found by their bytes: at most capacity()
/// graphs and max_footprint bytes of host memory, the least recently used going first.
/// The default holds the graphs a program computes in turn (ggml's scheduler runs one
/// per split: dozens a token for a large model with its attention on another device).
class GraphCache {
public:
    /// Graphs of more packed bytes than this are built for one run and not kept.
    static constexpr size_t max_bytes = size_t{16} << 20;
    /// The memory all kept graphs may hold together.
    static constexpr size_t max_footprint = size_t{64} << 20;
    static constexpr size_t default_capacity = 64;

    explicit GraphCache(size_t capacity = default_capacity) : capacity_(capacity) {}
    void set_capacity(size_t n) {
        capacity_ = n;
        while (graphs_.size() > capacity_)
            evict();
    }
    [[nodiscard]] size_t capacity() const noexcept { return capacity_; }
    [[nodiscard]] size_t size() const noexcept { return graphs_.size(); }

    /// The kept graph built from exactly these bytes, or null. The bytes may be changing
    /// while they are compared (a guest's blob): a graph found matched every byte read,
    /// and what runs is the kept copy, checked when it was built.
    [[nodiscard]] BuiltGraph* find(std::span<const std::byte> packed) noexcept {
        for (auto& g : graphs_)
            if (g->bytes.size() == packed.size() &&
                std::memcmp(g->bytes.data(), packed.data(), packed.size()) == 0) {
                g->last_use = ++clock_;
                return g.get();
            }
        return nullptr;
    }
    /// Keeps g (evicting the least recently used graphs until it fits) and returns it; a
    /// graph that may not be kept (capacity 0, too large) is held for one run, until
    /// let_go() (or the next keep() or clear()).
    BuiltGraph& keep(std::unique_ptr<BuiltGraph> g) {
        g->last_use = ++clock_;
        const size_t size = g->footprint();
        if (capacity_ == 0 || g->bytes.size() > max_bytes || size > max_footprint) {
            once_ = std::move(g);
            return *once_;
        }
        once_.reset();
        while (!graphs_.empty() &&
               (graphs_.size() >= capacity_ || footprint_ + size > max_footprint))
            evict();
        footprint_ += size;
        graphs_.push_back(std::move(g));
        return *graphs_.back();
    }
    /// Frees the graph keep() held for one run, if any.
    void let_go() noexcept { once_.reset(); }
    /// Forgets g (its buffers are gone).
    void drop(const BuiltGraph* g) {
        for (auto it = graphs_.begin(); it != graphs_.end(); ++it)
            if (it->get() == g) {
                footprint_ -= (*it)->footprint();
                graphs_.erase(it);
                return;
            }
    }
    void clear() {
        graphs_.clear();
        footprint_ = 0;
        once_.reset();
    }

private:
    void evict() {
        if (graphs_.empty()) return;
        auto oldest = graphs_.begin();
        for (auto it = graphs_.begin(); it != graphs_.end(); ++it)
            if ((*it)->last_use < (*oldest)->last_use) oldest = it;
        footprint_ -= (*oldest)->footprint();
        graphs_.erase(oldest);
    }

    std::vector<std::unique_ptr<BuiltGraph>> graphs_;
    std::unique_ptr<BuiltGraph> once_;
    size_t capacity_;
    size_t footprint_ = 0; ///< of graphs_
    uint64_t clock_ = 0;
};

} // namespace apir::ggml_host
