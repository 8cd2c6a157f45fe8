// The host: command parsing, HANDSHAKE, LOADLIBRARY (dlopen) and FORWARD dispatch.
#include "apir/host.hpp"

#include "apir/backend_abi.h"
#include "apir/command.hpp"
#include "apir/internal/unique_handle.hpp"
#include "apir/wire.hpp"

#include <cerrno>
#include <cstring>
#include <mutex>
#include <shared_mutex>
#include <unordered_map>
#include <vector>

#include <dlfcn.h>
#include <sys/stat.h>

namespace apir {
namespace {

// A warning the guest can repeat at will (a dropped command, LOADLIBRARY again, a
// backend reporting its reply end outside the page) is logged the first time, then at
// most once per this interval with the count held back; HostStats counts all.
constexpr std::chrono::seconds repeated_warning_interval{1};

// The ABI callbacks carry only a context id, so the hosts of this process are found
// through one registry. It is the host's only process-wide state: each host registers
// under its own id, so hosts share nothing of ours (a backend library two hosts load is
// one copy, so they share whatever global state it keeps).
// A look-up holds the lock (shared) for as long as it uses the host, so a host is
// never destroyed under it.
struct Registry {
    std::shared_mutex mu;
    std::unordered_map<uint32_t, Host::Impl*> hosts;
    uint32_t next_id = 1;
};
// Never destroyed: a host thread abandoned in a backend call (a loopback link's or the
// simulated device's, after their grace) may still look a host up while the process's
// static objects are destroyed at exit.
Registry& registry() {
    static Registry* r = new Registry;
    return *r;
}

/// Closes a dlopen handle.
struct LibraryTraits {
    using handle_type = void*;
    static constexpr void* empty() noexcept { return nullptr; }
    void close(void* h) const noexcept { dlclose(h); }
};
/// A loaded library.
using Library = detail::UniqueHandle<LibraryTraits>;

template <class Fn>
Fn symbol(const Library& lib, const char* name) {
    return reinterpret_cast<Fn>(dlsym(lib.get(), name));
}

} // namespace

struct APIR_LOCAL Host::Impl {
    Impl(HostOptions o, HostMemory& m) : options(std::move(o)), memory(m) {
        auto& r = registry();
        std::lock_guard lk(r.mu);
        ctx_id = r.next_id++;
        r.hosts.emplace(ctx_id, this);
    }
    ~Impl() {
        unload();
        auto& r = registry();
        std::lock_guard lk(r.mu);
        r.hosts.erase(ctx_id);
    }

    void unload() {
        if (deinit) deinit(ctx_id);
        deinit = nullptr;
        dispatcher = nullptr;
        library.reset();
    }

    // Calls use(host or null) with the host of context ctx kept alive meanwhile.
    template <class F>
    static auto with_host(uint32_t ctx, F use) {
        auto& r = registry();
        std::shared_lock lk(r.mu);
        auto it = r.hosts.find(ctx);
        return use(it == r.hosts.end() ? nullptr : it->second);
    }

    // The value stays valid while the context lives (the ABI's promise).
    static const char* get_config(uint32_t ctx, const char* key) {
        return with_host(ctx, [key](Impl* h) -> const char* {
            if (!h || !key) return nullptr;
            auto it = h->options.config.find(std::string_view(key));
            return it == h->options.config.end() ? nullptr : it->second.c_str();
        });
    }
    static void* get_shmem_ptr(uint32_t ctx, uint32_t res_id) {
        return get_shmem_sized(ctx, res_id, nullptr);
    }

    // The checked look-up behind Host::shmem and Host::shmem_for_context.
    Expected<std::span<std::byte>> checked_resource(uint32_t res_id) {
        auto s = memory.resource(res_id);
        if (s.empty()) return fail(Errc::unknown_resource, fmt::format("resource {}", res_id));
        return s;
    }

    static void* get_shmem_sized(uint32_t ctx, uint32_t res_id, uint64_t* size) {
        auto s = with_host(ctx, [res_id](Impl* h) {
            return h ? h->memory.resource(res_id) : std::span<std::byte>{};
        });
        if (size) *size = s.size();
        return s.empty() ? nullptr : s.data();
    }

    // writable: the command's bytes are the host's until it returns (the payload is
    // handed to the backend in place), else null (it gets a copy).
    Expected<void> execute(std::span<const std::byte> cmd, std::byte* writable);
    uint32_t load_library();
    uint32_t load_library_once();
    // Logs why LOADLIBRARY fails and keeps it for load_library_failure().
    void failed(std::string why) {
        options.logger.error("host: LOADLIBRARY: {}", why);
        load_failure = std::move(why);
    }
    uint32_t forward(uint32_t cmd_id, std::span<const std::byte> payload, std::byte* writable,
                     std::span<std::byte> page);
    void reply(std::span<std::byte> page, uint32_t code) { memory.notify(page, code); }
    Expected<void> reject(Errc e, std::string why) {
        ++stats.rejected;
        if (uint64_t held = 0; dropped_log.admit(held))
            options.logger.warn("host: dropped a command: {}{}", why, held_back(held));
        return fail(e, std::move(why));
    }
    static std::string held_back(uint64_t n) {
        return n ? fmt::format(" ({} more since the last report)", n) : std::string();
    }

    HostOptions options;
    HostMemory& memory;
    uint32_t ctx_id = 0;
    mutable std::mutex mu; // one command at a time, like a renderer context
    HostStats stats;
    std::vector<std::byte> scratch; // writable copy of the payload for the backend
    virgl_apir_callbacks callbacks{&Impl::get_config, &Impl::get_shmem_ptr};
    Library library;
    apir_backend_deinit_fn deinit = nullptr;
    apir_backend_dispatcher_fn dispatcher = nullptr;
    std::string load_failure; // why the last LOADLIBRARY failed
    // Warnings the guest can repeat at will; under mu.
    RepeatLimiter dropped_log{repeated_warning_interval};
    RepeatLimiter reload_log{repeated_warning_interval};
    RepeatLimiter reply_end_log{repeated_warning_interval};
};

Expected<void> Host::Impl::execute(std::span<const std::byte> cmd, std::byte* writable) {
    std::lock_guard lk(mu);
    ++stats.commands;
    if (cmd.size() < command_header_size)
        return reject(Errc::decode_overrun,
                      fmt::format("{} byte command, header needs 12", cmd.size()));
    if (cmd.size() > options.max_command_size)
        return reject(Errc::decode_size_too_large,
                      fmt::format("{} byte command, the host accepts at most {}", cmd.size(),
                                  options.max_command_size));

    Decoder dec(cmd);
    CommandHeader header;
    (void)dec.get_into(header); // cannot fail: the command holds a whole header
    const int32_t raw_type = header.type;
    const uint32_t flags = header.flags;
    const uint32_t reply_id = header.reply_res_id;
    const auto payload = dec.rest();

    std::span<std::byte> page = memory.resource(reply_id);
    if (page.empty())
        return reject(Errc::unknown_resource, fmt::format("reply resource {} unknown", reply_id));
    if (page.size() < reply_header_size || (reinterpret_cast<uintptr_t>(page.data()) & 3) != 0)
        return reject(Errc::reply_too_large,
                      fmt::format("reply resource {} unusable as a page", reply_id));

    const int64_t type = int64_t{raw_type} - options.command_type_offset;
    switch (type) {
    case static_cast<int32_t>(CommandType::handshake): {
        ++stats.handshakes;
        Decoder p(payload);
        uint32_t guest_major = p.read_u32();
        uint32_t guest_minor = p.read_u32();
        if (!p.ok()) {
            // A handshake we cannot read gets a reply that is not the magic.
            reply(page, 0);
            return reject(Errc::decode_overrun, "truncated HANDSHAKE payload");
        }
        if (guest_major != options.version_major || guest_minor != options.version_minor)
            options.logger.info("host: guest speaks APIR {}.{}, host {}.{}", guest_major,
                                guest_minor, options.version_major, options.version_minor);
        Encoder out(page.subspan(reply_header_size));
        out.write_u32(options.version_major);
        out.write_u32(options.version_minor);
        reply(page, handshake_magic);
        return {};
    }
    case static_cast<int32_t>(CommandType::load_library):
        ++stats.load_library;
        reply(page, load_library());
        return {};
    case static_cast<int32_t>(CommandType::forward):
        ++stats.forwards;
        reply(page, forward(flags, payload,
                            writable ? writable + (payload.data() - cmd.data()) : nullptr, page));
        return {};
    default:
        return reject(Errc::unknown_command, fmt::format("command type {}", raw_type));
    }
}

uint32_t Host::Impl::load_library() {
    load_failure.clear();
    const uint32_t code = load_library_once();
    if (code != static_cast<uint32_t>(LoadLibraryCode::success) && load_failure.empty())
        load_failure = fmt::format("LOADLIBRARY answered {}", code);
    return code;
}

uint32_t Host::Impl::load_library_once() {
    constexpr auto code = [](LoadLibraryCode c) { return static_cast<uint32_t>(c); };
    auto& log = options.logger;
    if (library) {
        if (uint64_t held = 0; reload_log.admit(held))
            log.warn("host: LOADLIBRARY: a library is already loaded{}", held_back(held));
        load_failure = "a library is already loaded";
        return code(LoadLibraryCode::already_loaded);
    }
    auto it = options.config.find(config_library_path);
    if (it == options.config.end()) {
        failed(fmt::format("configuration key '{}' is not set", config_library_path));
        return code(LoadLibraryCode::config_missing);
    }
    const std::string& path = it->second;
    struct stat st {};
    if (stat(path.c_str(), &st) != 0) {
        const int err = errno;
        // The path is used as it is: a bare name is not looked up on the loader's path.
        const bool bare = path.find('/') == std::string::npos;
        failed(err == ENOENT ? fmt::format("'{}' does not exist (no such file){}", path,
                                           bare ? "; give the library's full path" : "")
                             : fmt::format("'{}' cannot be read: {}", path, std::strerror(err)));
        return code(LoadLibraryCode::cannot_open);
    }
    if (!S_ISREG(st.st_mode)) {
        failed(fmt::format("'{}' is not a regular file{}", path,
                           S_ISDIR(st.st_mode) ? " but a directory" : ""));
        return code(LoadLibraryCode::cannot_open);
    }
    Library lib(dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL));
    if (!lib) {
        const char* why = dlerror();
        failed(fmt::format("dlopen: {}", why ? why : "failed without a reason"));
        return code(LoadLibraryCode::cannot_open);
    }
    auto init = symbol<apir_backend_initialize_fn>(lib, APIR_BACKEND_INITIALIZE_SYMBOL);
    auto disp = symbol<apir_backend_dispatcher_fn>(lib, APIR_BACKEND_DISPATCHER_SYMBOL);
    if (!init || !disp) {
        failed(fmt::format("'{}' lacks {}: it is not an APIR backend library ('{}' must name "
                           "one, e.g. ggml's libggml-virtgpu-backend.so)",
                           path,
                           !init ? APIR_BACKEND_INITIALIZE_SYMBOL : APIR_BACKEND_DISPATCHER_SYMBOL,
                           config_library_path));
        return code(LoadLibraryCode::symbol_missing);
    }
    if (auto bind =
            symbol<apir_backend_set_shmem_sized_fn>(lib, APIR_BACKEND_SET_SHMEM_SIZED_SYMBOL);
        bind && options.offer_sized_shmem)
        bind(ctx_id, &Impl::get_shmem_sized);
    const uint32_t r = init(ctx_id, &callbacks);
    // 0 and base+success both mean success; anything else travels as base + r.
    if (r != 0 && r != code(LoadLibraryCode::base_index)) {
        // The guest decodes the returned code itself: the detail says what the code cannot,
        // which library it was, so that the two read together say nothing twice.
        options.logger.error("host: LOADLIBRARY: '{}' failed to initialize "
                             "(apir_backend_initialize returned {})",
                             path, r);
        load_failure = fmt::format("'{}' failed to initialize", path);
        if (r > UINT32_MAX - code(LoadLibraryCode::base_index) - 1)
            return code(LoadLibraryCode::base_index) + 1; // keep the word non-zero
        return code(LoadLibraryCode::base_index) + r;
    }
    deinit = symbol<apir_backend_deinit_fn>(lib, APIR_BACKEND_DEINIT_SYMBOL);
    dispatcher = disp;
    library = std::move(lib);
    log.info("host: loaded '{}' in context {}", path, ctx_id);
    return code(LoadLibraryCode::success);
}

uint32_t Host::Impl::forward(uint32_t cmd_id, std::span<const std::byte> payload,
                             std::byte* writable, std::span<std::byte> page) {
    if (!dispatcher) return static_cast<uint32_t>(ForwardCode::no_dispatch);
    // The ABI hands the backend a mutable decode region: the command's own bytes where
    // they are the host's, else our own copy.
    if (!writable) {
        scratch.assign(payload.begin(), payload.end());
        writable = scratch.data();
    }
    char* dec = reinterpret_cast<char*>(writable);
    char* enc = reinterpret_cast<char*>(page.data() + reply_header_size);
    const char* enc_end = reinterpret_cast<const char*>(page.data() + page.size());
    char* enc_after = enc;
    uint32_t ret =
        dispatcher(ctx_id, &callbacks, cmd_id, dec, dec + payload.size(), enc, enc_end, &enc_after);
    if (enc_after < enc || enc_after > enc_end) {
        ++stats.bad_reply_end;
        if (uint64_t held = 0; reply_end_log.admit(held))
            options.logger.error(
                "host: backend command {} reported its reply ending outside the page{}", cmd_id,
                held_back(held));
    }
    constexpr uint32_t base = static_cast<uint32_t>(ForwardCode::base_index);
    if (ret > UINT32_MAX - base - 1) ret = UINT32_MAX - base - 1; // keep the word non-zero
    return base + ret;
}

Host::Host(HostOptions options, HostMemory& memory)
    : impl_(std::make_unique<Impl>(std::move(options), memory)) {}
Host::~Host() = default;

Expected<void> Host::execute(std::span<const std::byte> command) {
    return impl_->execute(command, nullptr);
}
Expected<void> Host::execute_in_place(std::span<std::byte> command) {
    return impl_->execute(command, command.data());
}
uint32_t Host::context_id() const noexcept {
    return impl_->ctx_id;
}
bool Host::library_loaded() const noexcept {
    std::lock_guard lk(impl_->mu);
    return impl_->dispatcher != nullptr;
}
HostStats Host::stats() const noexcept {
    std::lock_guard lk(impl_->mu);
    return impl_->stats;
}

std::string Host::load_library_failure() const {
    std::lock_guard lk(impl_->mu);
    return impl_->load_failure;
}

Expected<std::span<std::byte>> Host::shmem(uint32_t res_id) const {
    return impl_->checked_resource(res_id);
}

Expected<std::span<std::byte>> Host::shmem_for_context(uint32_t ctx_id, uint32_t res_id) {
    return Impl::with_host(ctx_id, [&](Impl* h) -> Expected<std::span<std::byte>> {
        if (!h) return fail(Errc::invalid_argument, fmt::format("no host context {}", ctx_id));
        return h->checked_resource(res_id);
    });
}

Expected<void> parse_host_config(std::string_view text, char sep, HostConfig& out) {
    while (!text.empty()) {
        const size_t end = std::min(text.find(sep), text.size());
        const std::string_view item = text.substr(0, end);
        text.remove_prefix(std::min(end + 1, text.size()));
        if (item.empty()) continue;
        const size_t eq = item.find('=');
        if (eq == std::string_view::npos || eq == 0)
            return fail(Errc::invalid_argument, fmt::format("'{}' is not key=value", item));
        out.insert_or_assign(std::string(item.substr(0, eq)), std::string(item.substr(eq + 1)));
    }
    return {};
}

} // namespace apir
