// The host: the other end of an APIR link.
//
// A Host parses command buffers the way the virtio-gpu renderer's APIR component
// does, answers HANDSHAKE, loads an APIR backend library on LOADLIBRARY (through the
// ABI in apir/backend_abi.h) and hands it every FORWARD. It is what the loopback
// transport and the simulated virtio-gpu device run; it can load ggml's own
// libggml-virtgpu-backend.so as well as any other library with that ABI.
//
//     apir::HostOptions opts;
//     opts.config["apir.load_library.path"] = "/usr/lib/libggml-virtgpu-backend.so";
//     opts.config["ggml.library.path"] = "/usr/lib/libggml-vulkan.so";
//     opts.config["ggml.library.reg"] = "ggml_backend_vk_reg";
//     apir::LoopbackOptions lo;
//     lo.host = opts;
//     apir::LoopbackTransport t(std::move(lo));
//
// Guest input is untrusted: an unknown reply resource, a truncated or oversized
// command, an unknown command type or a reply page too small get no reply (and a log
// line and a counter), never a crash or a write outside the page.
#pragma once

#include "apir/error.hpp"
#include "apir/export.hpp"
#include "apir/host_memory.hpp"
#include "apir/log.hpp"
#include "apir/protocol.hpp"

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>

namespace apir {

/// A host's configuration: key → value, what a backend reads through get_config.
using HostConfig = std::map<std::string, std::string, std::less<>>;

/// Adds the "key=value" items of text, separated by sep (empty items skipped, a later
/// key replacing an earlier one), to out; INVALID_ARGUMENT naming the first item that is
/// not key=value (out then holds the items before it).
[[nodiscard]] APIR_EXPORT Expected<void> parse_host_config(std::string_view text, char sep,
                                                           HostConfig& out);

struct HostOptions {
    /// Configuration the backend reads through get_config (apir.load_library.path,
    /// ggml.library.path, ggml.library.reg, ...).
    HostConfig config;
    /// The version this host reports in HANDSHAKE.
    uint32_t version_major = protocol_major;
    uint32_t version_minor = protocol_minor;
    /// Subtracted from command types (331 in Venus transition mode).
    int32_t command_type_offset = 0;
    /// Largest command buffer the host accepts; a larger one is dropped unread, so that
    /// a guest cannot make the host copy an arbitrary amount (ggml sends 4 KiB; bulk
    /// data travels in shared memory).
    size_t max_command_size = size_t{1} << 20;
    /// Whether LOADLIBRARY offers the backend the sized shared-memory look-up (this
    /// project's apir_backend_set_shmem_sized). false: only the three standard entry
    /// points, as the virtio-gpu renderer does.
    bool offer_sized_shmem = true;
    Logger logger;
};

/// What the host has seen; counters only grow.
struct HostStats {
    uint64_t commands = 0;
    uint64_t handshakes = 0;
    uint64_t load_library = 0;
    uint64_t forwards = 0;
    /// Commands dropped without a reply: truncated, oversized, unknown type, bad reply page.
    uint64_t rejected = 0;
    /// Backends that reported a reply end outside their reply region.
    uint64_t bad_reply_end = 0;
};

class APIR_EXPORT Host {
public:
    Host(HostOptions options, HostMemory& memory);
    ~Host(); // runs apir_backend_deinit and unloads the library
    Host(const Host&) = delete;
    Host& operator=(const Host&) = delete;

    /// Executes one command buffer and, where the protocol says so, writes the reply
    /// into the reply page and notifies. Serialized: one command at a time. Returns
    /// why a command got no reply (for logs and tests); the guest sees only the page.
    Expected<void> execute(std::span<const std::byte> command);
    /// The same for a command whose bytes are the host's until it returns (a queue
    /// slot, a kernel copy): the backend decodes the payload in place, no copy.
    Expected<void> execute_in_place(std::span<std::byte> command);

    /// The context id the backend library sees.
    [[nodiscard]] uint32_t context_id() const noexcept;
    [[nodiscard]] bool library_loaded() const noexcept;
    [[nodiscard]] HostStats stats() const noexcept;
    /// Why the last LOADLIBRARY failed ("'x' is not a regular file", "dlopen: ..."), the
    /// reason the guest's return code cannot carry; empty when it succeeded. A loopback
    /// session adds it to its LOADLIBRARY error (the host peer's diagnostics).
    [[nodiscard]] std::string load_library_failure() const;
    /// Checked look-up: the resource's mapping with its size, or UNKNOWN_RESOURCE;
    /// backends linked against this project can use it instead of get_shmem_ptr.
    [[nodiscard]] Expected<std::span<std::byte>> shmem(uint32_t res_id) const;
    /// Same, for the host serving context ctx_id (what a backend has in hand).
    [[nodiscard]] static Expected<std::span<std::byte>> shmem_for_context(uint32_t ctx_id,
                                                                          uint32_t res_id);

    struct Impl; // opaque

private:
    std::unique_ptr<Impl> impl_;
};

} // namespace apir
