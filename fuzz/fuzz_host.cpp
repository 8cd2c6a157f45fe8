// Fuzz target: the host dispatcher fed whole command buffers by a hostile guest.
//
// Input: byte 0 says whether the demo backend is loaded before the commands (bit 0)
// and whether the host runs in Venus transition mode (bit 1); the rest is a list of
// command buffers, each a little-endian uint16 length and that many bytes (the last
// one takes whatever is left). They run in order on a fresh host, so sequences such
// as FORWARD before LOADLIBRARY or LOADLIBRARY twice are reachable.
//
// Guest memory holds real blobs, each an exact-size heap allocation so that ASan
// catches a write past one: a reply page (id 2), a data blob (id 3), a page too small
// for a reply (id 4, 2 bytes), and a blob whose mapping is not 4-byte aligned (id 5).
// Every other id is bogus. After each command the host must have answered (or not)
// without touching memory outside the blobs.
#include <apir/host.hpp>
#include <apir/reply_page.hpp>
#include <apir/transport.hpp>
#include <apir/wire.hpp>

#include "demo_protocol.hpp"

#include <dlfcn.h>

#include <array>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <vector>

namespace {

constexpr uint32_t page_id = 2, blob_id = 3, tiny_id = 4, odd_id = 5;

[[noreturn]] void violated(const char* what) {
    fmt::print(stderr, "fuzz-host: invariant violated: {}\n", what);
    std::abort();
}

struct FuzzMemory final : apir::HostMemory {
    std::map<uint32_t, std::vector<std::byte>> blobs;
    std::vector<std::byte> odd_backing;
    std::span<std::byte> odd;

    FuzzMemory() {
        blobs[page_id].resize(apir::reply_page_size);
        blobs[blob_id].resize(64 * 1024);
        blobs[tiny_id].resize(2);
        odd_backing.resize(apir::reply_page_size + 1);
        odd = std::span<std::byte>(odd_backing).subspan(1);
    }
    std::span<std::byte> resource(uint32_t id) noexcept override {
        if (id == odd_id) return odd;
        auto it = blobs.find(id);
        return it == blobs.end() ? std::span<std::byte>{} : std::span<std::byte>(it->second);
    }
};

// Keeps the backend mapped between inputs so that each host's dlopen/dlclose is a
// reference count, not a reload.
void* const g_backend_pin = dlopen(APIR_FUZZ_BACKEND, RTLD_NOW | RTLD_LOCAL);

// A backend told to sleep would stall the fuzzer: the guest may ask for it (the
// demo backend trusts its caller), so such commands are not sent.
bool asks_to_sleep(std::span<const std::byte> cmd, int32_t offset) {
    if (cmd.size() < apir::command_header_size) return false;
    apir::Decoder d(cmd);
    const auto type = static_cast<int32_t>(d.read_u32());
    const auto flags = d.read_u32();
    return int64_t{type} - offset == static_cast<int32_t>(apir::CommandType::forward) &&
           flags == demo::cmd_sleep;
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size < 1 || !g_backend_pin) return 0;
    const bool preload = data[0] & 1;
    const int32_t offset = (data[0] & 2) ? apir::venus_command_offset : 0;
    std::span<const uint8_t> in(data + 1, size - 1);

    FuzzMemory mem;
    apir::HostOptions opts;
    opts.config[std::string(apir::config_library_path)] = APIR_FUZZ_BACKEND;
    opts.command_type_offset = offset;
    opts.logger = apir::Logger(nullptr);
    apir::Host host(opts, mem);

    if (preload) {
        std::array<std::byte, apir::command_header_size> ll{};
        apir::Encoder e(ll);
        e.write_u32(
            static_cast<uint32_t>(static_cast<int32_t>(apir::CommandType::load_library) + offset));
        e.write_u32(0);
        e.write_u32(page_id);
        (void)host.execute(e.written());
        if (apir::notification_word(mem.resource(page_id)).load() != 1)
            violated("the demo backend did not load");
    }

    size_t commands = 0;
    while (!in.empty() && commands < 64) {
        size_t n = in.size();
        if (in.size() >= 2) {
            n = std::min<size_t>(in[0] | size_t{in[1]} << 8, in.size() - 2);
            in = in.subspan(2);
        }
        // An exact-size copy: ASan sees any read past the command.
        std::vector<std::byte> cmd(n);
        if (n) std::memcpy(cmd.data(), in.data(), n);
        in = in.subspan(n);
        ++commands;
        if (asks_to_sleep(cmd, offset)) continue;

        for (auto& [id, b] : mem.blobs)
            if (b.size() >= 4) apir::notification_word(b).store(0);
        auto r = host.execute(cmd);
        if (!r && r.error().name() == "UNKNOWN_ERROR") violated("an unnamed rejection");
    }

    // Every command was served or rejected (a truncated HANDSHAKE counts as both).
    const auto st = host.stats();
    const uint64_t served = st.handshakes + st.load_library + st.forwards;
    if (st.commands < served || st.commands > served + st.rejected)
        violated("a command was neither served nor rejected");
    return 0;
}
