// Internal: UniqueHandle, the one owner of an OS or kernel handle (an fd, a mapping, a
// GEM handle, a dlopen handle), in the manner of libcamera's UniqueFD and fmt's file.
//
// Move-only. Traits says what the empty handle is and how to close one; it may carry
// what closing needs (the device an fd came from), and travels with the handle.
//
//     struct Traits {
//         using handle_type = int;
//         static constexpr int empty() noexcept { return -1; }
//         void close(int fd) const noexcept { ::close(fd); }
//     };
//     apir::detail::UniqueHandle<Traits> fd(::open(path, O_RDONLY));
//     if (!fd) ...;
//     int raw = fd.release(); // no longer owned
#pragma once

#include <cstddef>
#include <utility>

#include <sys/mman.h>
#include <unistd.h>

namespace apir::detail {

template <class Traits>
class UniqueHandle {
public:
    using handle_type = typename Traits::handle_type;

    UniqueHandle() = default;
    explicit UniqueHandle(handle_type h, Traits traits = {}) noexcept
        : h_(h), traits_(std::move(traits)) {}
    UniqueHandle(UniqueHandle&& o) noexcept : h_(o.release()), traits_(std::move(o.traits_)) {}
    UniqueHandle& operator=(UniqueHandle&& o) noexcept {
        if (this != &o) {
            reset(o.release());
            traits_ = std::move(o.traits_);
        }
        return *this;
    }
    UniqueHandle(const UniqueHandle&) = delete;
    UniqueHandle& operator=(const UniqueHandle&) = delete;
    ~UniqueHandle() { reset(); }

    /// Closes the handle held (if any) and holds h instead.
    void reset(handle_type h = Traits::empty()) noexcept {
        handle_type old = std::exchange(h_, h);
        if (!(old == Traits::empty())) traits_.close(old);
    }
    /// Gives the handle up without closing it.
    [[nodiscard]] handle_type release() noexcept { return std::exchange(h_, Traits::empty()); }
    [[nodiscard]] const handle_type& get() const noexcept { return h_; }
    explicit operator bool() const noexcept { return !(h_ == Traits::empty()); }

private:
    handle_type h_ = Traits::empty();
    [[no_unique_address]] Traits traits_{};
};

/// A mapped range of memory: the handle of a mapping.
struct MappedRange {
    void* addr = nullptr;
    size_t size = 0;
    [[nodiscard]] std::byte* data() const noexcept { return static_cast<std::byte*>(addr); }
    bool operator==(const MappedRange&) const = default;
};

/// A file descriptor of this process, closed with close(2).
struct PosixFdTraits {
    using handle_type = int;
    static constexpr int empty() noexcept { return -1; }
    void close(int fd) const noexcept { (void)::close(fd); }
};
using PosixFd = UniqueHandle<PosixFdTraits>;

/// A mapping made with mmap(2), unmapped with munmap(2).
struct PosixMappingTraits {
    using handle_type = MappedRange;
    static constexpr MappedRange empty() noexcept { return {}; }
    void close(MappedRange m) const noexcept { (void)::munmap(m.addr, m.size); }
};
using PosixMapping = UniqueHandle<PosixMappingTraits>;

} // namespace apir::detail
