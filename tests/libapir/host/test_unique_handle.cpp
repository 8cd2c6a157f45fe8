// UniqueHandle, the owner of every fd, mapping, GEM handle and dlopen handle of the
// library (the host, the DRM transport, the simulated device, the virtual node).
#include "catch.hpp"

#include <apir/internal/unique_handle.hpp>

#include <utility>
#include <vector>

#include <fcntl.h>
#include <sys/mman.h>

namespace {

// Records what it closes, and carries a tag as stateful traits do (a device).
struct Recorder {
    std::vector<int>* closed = nullptr;
    int tag = 0;
    using handle_type = int;
    static constexpr int empty() noexcept { return -1; }
    void close(int h) const noexcept { closed->push_back(h * 100 + tag); }
};
using Handle = apir::detail::UniqueHandle<Recorder>;

} // namespace

TEST_CASE("a UniqueHandle closes its handle once, with the traits it came with", "[handle]") {
    std::vector<int> closed;
    {
        Handle a(3, {&closed, 1});
        CHECK(a);
        CHECK(a.get() == 3);
        Handle b(std::move(a)); // the handle and its traits move together
        CHECK_FALSE(a);
        CHECK(a.get() == -1);
        CHECK(b.get() == 3);
    }
    CHECK(closed == std::vector<int>{301});
}

TEST_CASE("reset closes the old handle and holds the new one; release gives it up", "[handle]") {
    std::vector<int> closed;
    Handle h(4, {&closed, 2});
    h.reset(5);
    CHECK(closed == std::vector<int>{402});
    CHECK(h.get() == 5);
    CHECK(h.release() == 5);
    CHECK_FALSE(h);
    h.reset();
    CHECK(closed == std::vector<int>{402}); // nothing more was closed
}

TEST_CASE("move assignment closes what the target held and takes the source's traits", "[handle]") {
    std::vector<int> closed;
    Handle a(6, {&closed, 1});
    Handle b(7, {&closed, 2});
    b = std::move(a);
    CHECK(closed == std::vector<int>{702});
    CHECK(b.get() == 6);
    auto& self = b;
    b = std::move(self); // self-assignment keeps the handle
    CHECK(b.get() == 6);
    b.reset();
    CHECK(closed == std::vector<int>{702, 601});
}

TEST_CASE("PosixFd and PosixMapping own a real descriptor and mapping", "[handle]") {
    int raw = -1;
    {
        apir::detail::PosixFd fd(::open("/dev/null", O_RDONLY | O_CLOEXEC));
        REQUIRE(fd);
        raw = fd.get();
        CHECK(fcntl(raw, F_GETFD) != -1);
    }
    CHECK(fcntl(raw, F_GETFD) == -1); // closed by the owner

    void* p = mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    REQUIRE(p != MAP_FAILED);
    apir::detail::PosixMapping m({p, 4096});
    CHECK(m.get().data() == static_cast<std::byte*>(p));
    CHECK(m.get().size == 4096);
    m.reset();
    CHECK_FALSE(m);
    unsigned char vec = 0;
    CHECK(mincore(p, 4096, &vec) == -1); // unmapped: ENOMEM
}
