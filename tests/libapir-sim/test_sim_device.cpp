// The simulated virtio-gpu device answers like Linux's driver (docs/PROTOCOL.md §6): what
// passes on it must have a chance on real hardware.
#include "apir/internal/virtgpu_ioctl.hpp"
#include "catch.hpp"
#include "drm_test_util.hpp"

#include <apir/reply_page.hpp>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include <sys/mman.h>

using namespace apir_test;
namespace uapi = apir::uapi;
namespace drm = apir::drm;

namespace {

struct Opened {
    std::shared_ptr<SimDevice> dev;
    int fd;
};

Opened open_sim(SimConfig config = {}) {
    auto dev = make_sim(std::move(config));
    int fd = dev->open("/dev/dri/renderD128");
    REQUIRE(fd >= 0);
    return {dev, fd};
}

int context_init(SimDevice& dev, int fd, std::vector<uapi::context_set_param> params) {
    uapi::context_init ci{};
    ci.num_params = static_cast<uint32_t>(params.size());
    ci.ctx_set_params = reinterpret_cast<uintptr_t>(params.data());
    return dev.ioctl(fd, uapi::ioctl_context_init, &ci);
}

int create_blob(SimDevice& dev, int fd, uint64_t size, uint32_t& handle, uint32_t& res) {
    return drm::ioctl_resource_create_blob(dev, fd, size, handle, res);
}

} // namespace

TEST_CASE("the kernel structs and ioctl numbers match Linux", "[sim][uapi]") {
    CHECK(sizeof(uapi::resource_create_blob) == 48);
    CHECK(uapi::ioctl_resource_create_blob == 0xc030644aul);
    CHECK(uapi::ioctl_context_init == 0xc010644bul);
    CHECK(uapi::ioctl_getparam == 0xc0106443ul);
    CHECK(uapi::ioctl_get_caps == 0xc0186449ul);
    CHECK(uapi::ioctl_map == 0xc0106441ul);
    CHECK(uapi::ioctl_gem_close == 0x40086409ul);
    CHECK((uapi::ioctl_execbuffer == 0xc0286442ul || uapi::ioctl_execbuffer == 0xc0406442ul));
    CHECK(uapi::ioctl_version == 0xc0406400ul);
}

TEST_CASE("VERSION names virtio_gpu 0.1.0 and reports the full name length", "[sim]") {
    auto [dev, fd] = open_sim();
    drm::DriverVersion v;
    REQUIRE(drm::ioctl_version(*dev, fd, v) == 0);
    CHECK(v.name == "virtio_gpu");
    CHECK(v.major == 0);
    CHECK(v.minor == 1);
    CHECK(v.patch == 0);

    char small[4] = {};
    uapi::version raw{};
    raw.name = small;
    raw.name_len = sizeof(small);
    REQUIRE(dev->ioctl(fd, uapi::ioctl_version, &raw) == 0);
    CHECK(raw.name_len == 10);
    CHECK(std::string(small, 4) == "virt");
    CHECK(dev->close(fd) == 0);
}

TEST_CASE("GETPARAM writes only 4 bytes through the value pointer", "[sim]") {
    auto [dev, fd] = open_sim();
    uint64_t value = ~uint64_t{0};
    uapi::getparam p{};
    p.param = uint64_t(uapi::Param::features_3d);
    p.value = reinterpret_cast<uintptr_t>(&value);
    REQUIRE(dev->ioctl(fd, uapi::ioctl_getparam, &p) == 0);
    CHECK(value == 0xffffffff00000001ull); // the upper half is left as it was

    uint64_t v = 0;
    CHECK(drm::ioctl_getparam(*dev, fd, uint64_t(uapi::Param::supported_capset_ids), v) == 0);
    CHECK(v == ((1u << 2) | (1u << 4) | (1u << 10)));
    CHECK(drm::ioctl_getparam(*dev, fd, uint64_t(uapi::Param::capset_query_fix), v) == 0);
    CHECK(v == 1);
    CHECK(drm::ioctl_getparam(*dev, fd, 99, v) == -EINVAL);
    CHECK(drm::ioctl_getparam(*dev, fd, 0, v) == -EINVAL);
    CHECK(drm::ioctl_getparam(*dev, fd, uint64_t(uapi::Param::explicit_debug_name), v) == 0);
    dev->close(fd);

    SimConfig old;
    old.kernel = SimKernel::linux_6_1;
    auto [dev61, fd61] = open_sim(old);
    CHECK(drm::ioctl_getparam(*dev61, fd61, uint64_t(uapi::Param::explicit_debug_name), v) ==
          -EINVAL);
    dev61->close(fd61);
}

TEST_CASE("GET_CAPS: ENOSYS without capsets, EINVAL for size 0 or an unknown capset", "[sim]") {
    auto [dev, fd] = open_sim();
    uapi::apir_capset caps{};
    CHECK(drm::ioctl_get_caps(*dev, fd, 10, 0, &caps, sizeof(caps)) == 0);
    CHECK(caps.supports_blob_resources == 1);
    CHECK(drm::ioctl_get_caps(*dev, fd, 10, 0, &caps, 0) == -EINVAL);
    CHECK(drm::ioctl_get_caps(*dev, fd, 10, 1, &caps, sizeof(caps)) == -EINVAL); // version
    CHECK(drm::ioctl_get_caps(*dev, fd, 3, 0, &caps, sizeof(caps)) == -EINVAL);
    dev->close(fd);

    SimConfig none;
    none.capsets.clear();
    auto [dev2, fd2] = open_sim(none);
    CHECK(drm::ioctl_get_caps(*dev2, fd2, 10, 0, &caps, sizeof(caps)) == -ENOSYS);
    dev2->close(fd2);
}

TEST_CASE("GET_CAPS copies min(size, capset size) bytes", "[sim]") {
    SimConfig c;
    c.capsets = {SimConfig::apir_capset(1, 8)};
    auto [dev, fd] = open_sim(c);
    std::array<uint32_t, 6> words;
    words.fill(0xdeadbeef);
    REQUIRE(drm::ioctl_get_caps(*dev, fd, 10, 0, words.data(), 24) == 0);
    CHECK(words[0] == 1);
    CHECK(words[1] == 1);
    CHECK(words[2] == 0xdeadbeef); // not written
    words.fill(0xdeadbeef);
    REQUIRE(drm::ioctl_get_caps(*dev, fd, 10, 0, words.data(), 4) == 0);
    CHECK(words[1] == 0xdeadbeef);
    dev->close(fd);
}

TEST_CASE("CONTEXT_INIT must come before any blob or execbuffer", "[sim]") {
    auto [dev, fd] = open_sim();
    uint32_t h = 0, res = 0;
    REQUIRE(create_blob(*dev, fd, 4096, h, res) == 0); // creates a default context
    CHECK(drm::ioctl_context_init(*dev, fd, 10, 1) == -EEXIST);
    drm::ioctl_gem_close(*dev, fd, h);
    dev->close(fd);

    auto [dev2, fd2] = open_sim();
    uapi::execbuffer e{};
    CHECK(dev2->ioctl(fd2, uapi::ioctl_execbuffer, &e) == 0); // no ring index: default context
    CHECK(drm::ioctl_context_init(*dev2, fd2, 10, 1) == -EEXIST);
    CHECK(dev2->dropped_commands() == 1); // the default context has no APIR host
    dev2->close(fd2);
}

TEST_CASE("CONTEXT_INIT checks each parameter and does not roll back a failure", "[sim]") {
    using P = uapi::context_set_param;
    auto [dev, fd] = open_sim();
    // The capset is recorded, then NUM_RINGS fails...
    CHECK(context_init(*dev, fd, {P{1, 10}, P{2, 65}}) == -EINVAL);
    // ...and the retry fails because the capset is already set.
    CHECK(drm::ioctl_context_init(*dev, fd, 10, 1) == -EINVAL);
    CHECK(dev->contexts_created() == 0);
    dev->close(fd);

    auto [d2, f2] = open_sim();
    CHECK(context_init(*d2, f2, {P{1, 3}}) == -EINVAL);          // not offered
    CHECK(context_init(*d2, f2, {P{1, 64}}) == -EINVAL);         // > 63
    CHECK(context_init(*d2, f2, {P{9, 0}}) == -EINVAL);          // unknown param
    CHECK(context_init(*d2, f2, {P{2, 1}, P{2, 1}}) == -EINVAL); // duplicate
    CHECK(context_init(*d2, f2, {P{2, 1}, P{3, 2}}) == -EINVAL); // bit >= num_rings
    CHECK(context_init(*d2, f2, {P{1, 10}, P{2, 1}, P{3, 0}, P{2, 1}, P{2, 1}}) == -EINVAL); // 5
    d2->close(f2);

    SimConfig old;
    old.kernel = SimKernel::linux_6_1;
    auto [d3, f3] = open_sim(old);
    CHECK(context_init(*d3, f3, {P{1, 10}, P{2, 1}, P{3, 0}, P{4, 0}}) == -EINVAL); // 4 on 6.1
    CHECK(context_init(*d3, f3, {P{1, 10}, P{2, 1}, P{3, 0}}) == 0);
    CHECK(d3->last_context_capset() == 10);
    CHECK(context_init(*d3, f3, {P{1, 10}}) == -EEXIST);
    d3->close(f3);

    SimConfig no_init;
    no_init.has_context_init = false;
    auto [d4, f4] = open_sim(no_init);
    CHECK(drm::ioctl_context_init(*d4, f4, 10, 1) == -EINVAL);
    d4->close(f4);
}

TEST_CASE("resource ids are global from 2; GEM handles per file from 1, lowest reused", "[sim]") {
    auto dev = make_sim();
    int a = dev->open("/dev/dri/renderD128");
    int b = dev->open("/dev/dri/renderD128");
    REQUIRE(drm::ioctl_context_init(*dev, a, 10, 1) == 0);
    REQUIRE(drm::ioctl_context_init(*dev, b, 10, 1) == 0);
    uint32_t h1 = 0, r1 = 0, h2 = 0, r2 = 0, h3 = 0, r3 = 0, hb = 0, rb = 0;
    REQUIRE(create_blob(*dev, a, 4096, h1, r1) == 0);
    REQUIRE(create_blob(*dev, a, 4096, h2, r2) == 0);
    REQUIRE(create_blob(*dev, b, 4096, hb, rb) == 0);
    CHECK(r1 == 2);
    CHECK(r2 == 3);
    CHECK(rb == 4);
    CHECK(h1 == 1);
    CHECK(h2 == 2);
    CHECK(hb == 1);
    REQUIRE(drm::ioctl_gem_close(*dev, a, h1) == 0);
    REQUIRE(create_blob(*dev, a, 4096, h3, r3) == 0);
    CHECK(h3 == 1); // lowest free handle
    CHECK(r3 == 5); // ids are never reused
    CHECK(dev->gem_handles() == 3);
    dev->close(a);
    dev->close(b);
    CHECK(dev->nothing_alive());
}

TEST_CASE("RESOURCE_CREATE_BLOB refuses what Linux refuses", "[sim]") {
    auto [dev, fd] = open_sim();
    REQUIRE(drm::ioctl_context_init(*dev, fd, 10, 1) == 0);
    uint32_t h = 0, r = 0;
    CHECK(create_blob(*dev, fd, 0, h, r) == -ENOSPC);
    uapi::resource_create_blob b{};
    b.blob_mem = uapi::blob_mem_host3d;
    b.blob_flags = 8; // unknown flag
    b.size = 4096;
    CHECK(dev->ioctl(fd, uapi::ioctl_resource_create_blob, &b) == -EINVAL);
    b.blob_flags = uapi::blob_flag_use_mappable;
    b.blob_mem = 0;
    CHECK(dev->ioctl(fd, uapi::ioctl_resource_create_blob, &b) == -EINVAL);
    b.blob_mem = uapi::blob_mem_guest;
    b.blob_id = 7; // only host blobs have ids
    CHECK(dev->ioctl(fd, uapi::ioctl_resource_create_blob, &b) == -EINVAL);
    b.blob_mem = uapi::blob_mem_host3d;
    b.cmd_size = 3;
    CHECK(dev->ioctl(fd, uapi::ioctl_resource_create_blob, &b) == -EINVAL);
    CHECK(dev->gem_handles() == 0);
    dev->close(fd);

    SimConfig no_visible;
    no_visible.host_visible_bytes = 0;
    auto [d2, f2] = open_sim(no_visible);
    CHECK(create_blob(*d2, f2, 4096, h, r) == -EINVAL);
    d2->close(f2);

    SimConfig small;
    small.host_visible_bytes = 16384;
    auto [d3, f3] = open_sim(small);
    REQUIRE(drm::ioctl_context_init(*d3, f3, 10, 1) == 0);
    REQUIRE(create_blob(*d3, f3, 100, h, r) == 0); // rounded up to a page
    CHECK(d3->host_visible_used() == 4096);
    CHECK(create_blob(*d3, f3, 16384, h, r) == -ENOSPC);
    d3->close(f3);
    CHECK(d3->host_visible_used() == 0);
}

TEST_CASE("MAP gives a fake offset from 4 GiB; mmap wants it exactly", "[sim]") {
    auto [dev, fd] = open_sim();
    REQUIRE(drm::ioctl_context_init(*dev, fd, 10, 1) == 0);
    uint32_t h = 0, r = 0;
    REQUIRE(create_blob(*dev, fd, 16384, h, r) == 0);
    uint64_t off = 0, again = 0;
    REQUIRE(drm::ioctl_map(*dev, fd, h, off) == 0);
    CHECK(off >= (uint64_t{1} << 32));
    REQUIRE(drm::ioctl_map(*dev, fd, h, again) == 0);
    CHECK(again == off);
    CHECK(drm::ioctl_map(*dev, fd, 42, again) == -ENOENT);

    void* p = nullptr;
    CHECK(dev->mmap(fd, off + 4096, 4096, &p) == -EINVAL);
    CHECK(dev->mmap(fd, off, 16384 + 4096, &p) == -EINVAL);
    CHECK(dev->mmap(fd, off, 0, &p) == -EINVAL);
    int other = dev->open("/dev/dri/renderD128");
    CHECK(dev->mmap(other, off, 16384, &p) == -EACCES); // no handle in that file
    dev->close(other);
    REQUIRE(dev->mmap(fd, off, 16384, &p) == 0);
    std::memset(p, 0x5a, 16384);

    // GEM_CLOSE leaves the mapping valid; the object lives until munmap.
    REQUIRE(drm::ioctl_gem_close(*dev, fd, h) == 0);
    CHECK(drm::ioctl_gem_close(*dev, fd, h) == -EINVAL);
    CHECK(drm::ioctl_gem_close(*dev, fd, 0) == -EINVAL);
    CHECK(dev->objects() == 1);
    CHECK(static_cast<unsigned char*>(p)[100] == 0x5a);
    CHECK(dev->munmap(p, 4096) == -EINVAL); // not the mapping's length
    CHECK(dev->bad_munmaps() == 1);
    REQUIRE(dev->munmap(p, 16384) == 0);
    CHECK(dev->objects() == 0);
    dev->close(fd);
    CHECK(dev->nothing_alive());
}

TEST_CASE("EXECBUFFER: ring index needs rings from CONTEXT_INIT; BOs are checked", "[sim]") {
    auto [dev, fd] = open_sim();
    const std::byte cmd[12] = {};
    uapi::execbuffer e{};
    e.flags = uapi::execbuf_ring_idx;
    e.size = sizeof(cmd);
    e.command = reinterpret_cast<uintptr_t>(cmd);
    CHECK(dev->ioctl(fd, uapi::ioctl_execbuffer, &e) == -EINVAL); // num_rings is 0
    REQUIRE(drm::ioctl_context_init(*dev, fd, 10, 1) == 0);
    CHECK(dev->ioctl(fd, uapi::ioctl_execbuffer, &e) == 0);
    e.ring_idx = 1;
    CHECK(dev->ioctl(fd, uapi::ioctl_execbuffer, &e) == -EINVAL);
    e.ring_idx = 0;
    e.flags |= 0x100;
    CHECK(dev->ioctl(fd, uapi::ioctl_execbuffer, &e) == -EINVAL);
    e.flags = uapi::execbuf_ring_idx;

    uint32_t h = 0, r = 0;
    REQUIRE(create_blob(*dev, fd, 4096, h, r) == 0);
    uint32_t bos[2] = {h, 77};
    e.bo_handles = reinterpret_cast<uintptr_t>(bos);
    e.num_bo_handles = 2;
    CHECK(dev->ioctl(fd, uapi::ioctl_execbuffer, &e) == -ENOENT);
    bos[1] = h;
    CHECK(dev->ioctl(fd, uapi::ioctl_execbuffer, &e) == -EALREADY);
    e.num_bo_handles = 1;
    CHECK(dev->ioctl(fd, uapi::ioctl_execbuffer, &e) == 0);
    CHECK(dev->fenced_submits() == 1); // a BO makes an out fence

    e.num_bo_handles = 0;
    e.size = 0;
    CHECK(dev->ioctl(fd, uapi::ioctl_execbuffer, &e) == 0); // size 0 is accepted
    drm::ioctl_gem_close(*dev, fd, h);
    dev->close(fd);

    SimConfig no3d;
    no3d.has_3d = false;
    auto [d2, f2] = open_sim(no3d);
    CHECK(d2->ioctl(f2, uapi::ioctl_execbuffer, &e) == -ENOSYS);
    d2->close(f2);
}

TEST_CASE("EXECBUFFER takes the 40-byte (6.1) and the 64-byte (6.12) struct", "[sim]") {
    for (auto kernel : {SimKernel::linux_6_1, SimKernel::linux_6_12}) {
        SimConfig c;
        c.kernel = kernel;
        auto [dev, fd] = open_sim(c);
        REQUIRE(drm::ioctl_context_init(*dev, fd, 10, 1) == 0);
        struct {
            uapi::execbuffer e;
            uint32_t extra[6];
        } big{};
        const std::byte cmd[12] = {};
        big.e.flags = uapi::execbuf_ring_idx;
        big.e.size = sizeof(cmd);
        big.e.command = reinterpret_cast<uintptr_t>(cmd);
        const unsigned long n40 = DRM_IOWR(DRM_COMMAND_BASE + 2, char[40]);
        const unsigned long n64 = DRM_IOWR(DRM_COMMAND_BASE + 2, char[64]);
        CHECK(dev->ioctl(fd, n40, &big) == 0);
        CHECK(dev->ioctl(fd, n64, &big) == 0);
        dev->close(fd);
    }
}

TEST_CASE("a context's host answers a command written through the blob mapping", "[sim]") {
    auto [dev, fd] = open_sim();
    REQUIRE(drm::ioctl_context_init(*dev, fd, 10, 1) == 0);
    uint32_t h = 0, r = 0;
    REQUIRE(create_blob(*dev, fd, 16384, h, r) == 0);
    uint64_t off = 0;
    REQUIRE(drm::ioctl_map(*dev, fd, h, off) == 0);
    void* p = nullptr;
    REQUIRE(dev->mmap(fd, off, 16384, &p) == 0);
    std::span<std::byte> page(static_cast<std::byte*>(p), 16384);

    uint32_t cmd[5] = {0, 0, r, apir::protocol_major, apir::protocol_minor}; // HANDSHAKE
    REQUIRE(drm::ioctl_execbuffer(*dev, fd, std::as_bytes(std::span(cmd))) == 0);
    auto code = apir::wait_for_reply(page, {}, apir::Deadline::after(std::chrono::seconds(5)));
    REQUIRE(code);
    CHECK(*code == apir::handshake_magic);
    CHECK(dev->executed_commands() == 1);

    dev->munmap(p, 16384);
    drm::ioctl_gem_close(*dev, fd, h);
    dev->close(fd);
    CHECK(dev->nothing_alive());
}

TEST_CASE("closing the file releases its handles; mappings keep their objects", "[sim]") {
    auto [dev, fd] = open_sim();
    REQUIRE(drm::ioctl_context_init(*dev, fd, 10, 1) == 0);
    uint32_t h = 0, r = 0, h2 = 0, r2 = 0;
    REQUIRE(create_blob(*dev, fd, 4096, h, r) == 0);
    REQUIRE(create_blob(*dev, fd, 4096, h2, r2) == 0);
    uint64_t off = 0;
    REQUIRE(drm::ioctl_map(*dev, fd, h, off) == 0);
    void* p = nullptr;
    REQUIRE(dev->mmap(fd, off, 4096, &p) == 0);
    REQUIRE(dev->close(fd) == 0);
    CHECK(dev->close(fd) == -EBADF);
    CHECK(dev->gem_handles() == 0);
    CHECK(dev->objects() == 1);
    REQUIRE(dev->munmap(p, 4096) == 0);
    CHECK(dev->nothing_alive());
}

TEST_CASE("injected faults hit the chosen call, then stop", "[sim]") {
    auto [dev, fd] = open_sim();
    uint64_t v = 0;
    dev->fail(SimOp::getparam, EIO, 1, 2);
    CHECK(drm::ioctl_getparam(*dev, fd, 1, v) == 0);
    CHECK(drm::ioctl_getparam(*dev, fd, 1, v) == -EIO);
    CHECK(drm::ioctl_getparam(*dev, fd, 1, v) == -EIO);
    CHECK(drm::ioctl_getparam(*dev, fd, 1, v) == 0);
    CHECK(dev->calls(SimOp::getparam) == 4);
    dev->fail_always(SimOp::version, EPERM);
    drm::DriverVersion ver;
    CHECK(drm::ioctl_version(*dev, fd, ver) == -EPERM);
    CHECK(drm::ioctl_version(*dev, fd, ver) == -EPERM);
    dev->clear_faults();
    CHECK(drm::ioctl_version(*dev, fd, ver) == 0);
    dev->close(fd);
}

TEST_CASE("bad user pointers are EFAULT, as the kernel's copies make them", "[sim]") {
    SimConfig checked;
    checked.check_user_memory = true;
    auto [dev, fd] = open_sim(checked);
    void* none = ::mmap(nullptr, 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    void* ro = ::mmap(nullptr, 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    REQUIRE(none != MAP_FAILED);
    REQUIRE(ro != MAP_FAILED);
    const auto bad = reinterpret_cast<uintptr_t>(none);
    const auto readonly = reinterpret_cast<uintptr_t>(ro);

    CHECK(dev->ioctl(fd, uapi::ioctl_version, none) == -EFAULT);
    CHECK(dev->ioctl(fd, uapi::ioctl_getparam, ro) == -EFAULT); // written back
    uapi::getparam p{};
    p.param = uint64_t(uapi::Param::features_3d);
    p.value = readonly;
    CHECK(dev->ioctl(fd, uapi::ioctl_getparam, &p) == -EFAULT);
    uapi::get_caps g{};
    g.cap_set_id = 10;
    g.size = 24;
    g.addr = bad;
    CHECK(dev->ioctl(fd, uapi::ioctl_get_caps, &g) == -EFAULT);
    uapi::context_init ci{};
    ci.num_params = 1;
    ci.ctx_set_params = bad;
    CHECK(dev->ioctl(fd, uapi::ioctl_context_init, &ci) == -EFAULT);
    char name[32];
    uapi::version v{};
    v.name = name;
    v.name_len = sizeof name;
    v.desc = static_cast<char*>(ro);
    v.desc_len = 8;
    CHECK(dev->ioctl(fd, uapi::ioctl_version, &v) == -EFAULT);
    CHECK(std::string(name, 10) == "virtio_gpu"); // what came before the bad buffer
    uapi::execbuffer e{};
    e.size = 12;
    e.command = bad;
    CHECK(dev->ioctl(fd, uapi::ioctl_execbuffer, &e) == -EFAULT);
    const uint32_t cmd[3] = {};
    e.command = reinterpret_cast<uintptr_t>(cmd);
    e.num_bo_handles = 1;
    e.bo_handles = bad;
    CHECK(dev->ioctl(fd, uapi::ioctl_execbuffer, &e) == -EFAULT);
    ::munmap(none, 4096);
    ::munmap(ro, 4096);
    CHECK(dev->close(fd) == 0);
    CHECK(dev->nothing_alive());
}

TEST_CASE("munmap_range unmaps any part of a mapping; the last page releases it", "[sim]") {
    auto [dev, fd] = open_sim();
    uint32_t h = 0, r = 0;
    REQUIRE(create_blob(*dev, fd, 3 * 4096, h, r) == 0);
    uint64_t off = 0;
    REQUIRE(drm::ioctl_map(*dev, fd, h, off) == 0);
    void* p = nullptr;
    REQUIRE(dev->mmap(fd, off, 3 * 4096, &p) == 0);
    auto* b = static_cast<char*>(p);
    size_t released = 9;
    CHECK(dev->munmap_range(b + 1, 4096) == -EINVAL); // misaligned
    CHECK(dev->munmap_range(b + 4096, 4096, &released) == 0);
    CHECK(released == 0);
    CHECK(dev->mappings() == 1);
    b[0] = 1, b[2 * 4096] = 2;                           // the rest is still mapped
    CHECK(dev->munmap_range(b + 4096, 4096) == -ENOENT); // nothing of the device there
    CHECK(dev->munmap(p, 3 * 4096) == -EINVAL);          // the seam wants a whole mapping
    REQUIRE(drm::ioctl_gem_close(*dev, fd, h) == 0);
    // The pieces left, one at a time: the middle page was given back and the process may
    // have mapped other memory there since, which a range over all three would unmap.
    CHECK(dev->munmap_range(b + 2 * 4096, 4096, &released) == 0);
    CHECK(released == 0);
    CHECK(dev->mappings() == 1);
    CHECK(dev->munmap_range(b, 4096, &released) == 0);
    CHECK(released == 1);
    CHECK(dev->mappings() == 0);
    CHECK(dev->objects() == 0);
    dev->close(fd);
    CHECK(dev->nothing_alive());
}

TEST_CASE("closing a file whose host is stuck in a backend call returns after the grace", "[sim]") {
#if defined(__SANITIZE_THREAD__)
    // The host thread stays asleep in the demo backend (49 days) and is never joined, by
    // design; at exit ThreadSanitizer sees the backend's globals freed after that thread
    // read them, with no join between. The behaviour is checked in the other builds.
    WARN("not run under ThreadSanitizer: it abandons a thread for the rest of the process");
    return;
#endif
    SimConfig c;
    c.host = demo_host();
    c.stop_grace = std::chrono::milliseconds(100);
    std::vector<std::string> logged;
    c.logger = apir::Logger([&](apir::LogLevel, std::string_view m) { logged.emplace_back(m); },
                            apir::LogLevel::warn);
    auto dev = std::make_shared<SimDevice>(c);
    const int fd = dev->open("/dev/dri/renderD128");
    REQUIRE(fd >= 0);
    REQUIRE(drm::ioctl_context_init(*dev, fd, 10, 1) == 0);
    uint32_t h = 0, r = 0;
    REQUIRE(create_blob(*dev, fd, 16384, h, r) == 0);
    uint64_t off = 0;
    REQUIRE(drm::ioctl_map(*dev, fd, h, off) == 0);
    void* p = nullptr;
    REQUIRE(dev->mmap(fd, off, 16384, &p) == 0);
    std::span<std::byte> page(static_cast<std::byte*>(p), 16384);
    auto call = [&](std::vector<uint32_t> words, std::chrono::milliseconds limit) {
        apir::notification_word(page).store(0);
        REQUIRE(drm::ioctl_execbuffer(*dev, fd, std::as_bytes(std::span(words))) == 0);
        return apir::wait_for_reply(page, {}, apir::Deadline::after(limit));
    };
    REQUIRE(call({0, 0, r, apir::protocol_major, apir::protocol_minor}, std::chrono::seconds(5)));
    REQUIRE(call({1, 0, r}, std::chrono::seconds(5)));
    // FORWARD: the demo backend sleeps for 49 days.
    CHECK_FALSE(call({2, 4, r, 0xffffffffu}, std::chrono::milliseconds(50)));
    dev->munmap(p, 16384);
    drm::ioctl_gem_close(*dev, fd, h);
    const auto t0 = std::chrono::steady_clock::now();
    CHECK(dev->close(fd) == 0); // was: joined the host thread, forever
    CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(20));
    REQUIRE(logged.size() == 1);
    CHECK(logged[0].find("abandoned") != std::string::npos);
    CHECK(dev->nothing_alive());
}
