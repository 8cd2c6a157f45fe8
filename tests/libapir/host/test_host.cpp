// The host, driven directly with command buffers: what a hostile or buggy guest can
// send, and what the host answers.
#include "catch.hpp"

#include <apir/backend_abi.h>
#include <apir/call.hpp>
#include <apir/host.hpp>
#include <apir/reply_page.hpp>
#include <apir/transport.hpp>
#include <apir/wire.hpp>

#include "demo_protocol.hpp"

#include <dlfcn.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cstring>
#include <map>
#include <string>
#include <thread>
#include <vector>

namespace {

constexpr uint32_t page_id = 2;
constexpr uint32_t blob_id = 3;
constexpr uint32_t no_reply = 0; // word still 0: the host did not answer

// Guest memory for a host under test: a reply page and a data blob, each followed
// by a canary region the host must never touch.
struct TestMemory final : apir::HostMemory {
    static constexpr size_t canary = 256;
    std::map<uint32_t, std::vector<std::byte>> blobs;
    std::map<uint32_t, size_t> sizes;

    void add(uint32_t id, size_t size) {
        blobs[id].assign(size + canary, std::byte{0xcd});
        sizes[id] = size;
    }
    std::span<std::byte> resource(uint32_t id) noexcept override {
        auto it = blobs.find(id);
        if (it == blobs.end()) return {};
        return {it->second.data(), sizes[id]};
    }
    bool canaries_intact() const {
        for (auto& [id, b] : blobs)
            for (size_t i = sizes.at(id); i < b.size(); ++i)
                if (b[i] != std::byte{0xcd}) return false;
        return true;
    }
    uint32_t word(uint32_t id = page_id) { return apir::notification_word(resource(id)).load(); }
    std::span<std::byte> reply(uint32_t id = page_id) { return resource(id).subspan(4); }
};

struct Fixture {
    TestMemory mem;
    apir::HostOptions options;
    std::unique_ptr<apir::Host> host;

    explicit Fixture(std::string library = APIR_TEST_BACKEND_DEMO) {
        mem.add(page_id, apir::reply_page_size);
        mem.add(blob_id, 64 * 1024);
        if (!library.empty()) options.config[std::string(apir::config_library_path)] = library;
        options.logger = apir::Logger(nullptr);
    }
    apir::Host& h() {
        if (!host) host = std::make_unique<apir::Host>(options, mem);
        return *host;
    }
    // Sends one command; returns the notification word (code + 1, or 0 for no reply).
    template <class C>
    uint32_t send(const typename C::request& req, uint32_t reply = page_id, int32_t offset = 0) {
        std::array<std::byte, 4096> buf{};
        apir::Encoder e(buf);
        apir::encode_command<C>(e, offset, reply, req);
        REQUIRE(e.ok());
        return raw(e.written(), reply);
    }
    uint32_t raw(std::span<const std::byte> cmd, uint32_t reply = page_id) {
        const bool page = mem.resource(reply).size() >= 4;
        if (page) apir::notification_word(mem.resource(reply)).store(0);
        (void)h().execute(cmd);
        return page ? mem.word(reply) : no_reply;
    }
    uint32_t load() { return send<apir::LoadLibrary>(apir::Empty{}); }
};

template <class T>
T decode_reply(TestMemory& mem) {
    apir::Decoder d(mem.reply());
    auto v = d.get<T>();
    REQUIRE(v);
    return *v;
}

} // namespace

TEST_CASE("HANDSHAKE is answered with the magic and the host's version", "[host]") {
    Fixture f;
    f.options.version_minor = 1;
    CHECK(f.send<apir::Handshake>(apir::HandshakeRequest{0, 2}) == apir::handshake_magic + 1);
    auto v = decode_reply<apir::HandshakeReply>(f.mem);
    CHECK(v.major == 0);
    CHECK(v.minor == 1);
    CHECK(f.h().stats().handshakes == 1);
}

TEST_CASE("a HANDSHAKE too short to read gets an answer that is not the magic", "[host]") {
    Fixture f;
    std::array<std::byte, 16> cmd{};
    apir::Encoder e(cmd);
    e.write_u32(0);
    e.write_u32(0);
    e.write_u32(page_id);
    e.write_u32(0); // major only
    CHECK(f.raw(e.written()) == 0 + 1);
}

TEST_CASE("commands the host cannot serve get no reply and the host lives on", "[host]") {
    Fixture f;
    SECTION("truncated header, at every length") {
        std::array<std::byte, 12> cmd{};
        apir::Encoder e(cmd);
        e.write_u32(0);
        e.write_u32(0);
        e.write_u32(page_id);
        for (size_t n = 0; n < cmd.size(); ++n)
            CHECK(f.raw(std::span(cmd).first(n)) == no_reply);
        CHECK(f.h().stats().rejected == 12);
    }
    SECTION("unknown reply resource") {
        CHECK(f.send<apir::Handshake>({}, 999) == no_reply);
        auto r = f.h().execute({});
        CHECK(!r);
        CHECK(f.h().stats().rejected == 2);
    }
    SECTION("unknown command type") {
        std::array<std::byte, 12> cmd{};
        for (int32_t type : {3, -1, 330, 0x7fffffff}) {
            apir::Encoder e(cmd);
            e.write_u32(static_cast<uint32_t>(type));
            e.write_u32(0);
            e.write_u32(page_id);
            CHECK(f.raw(e.written()) == no_reply);
        }
        CHECK(f.h().stats().rejected == 4);
    }
    SECTION("a reply page smaller than the notification word") {
        f.mem.add(9, 2);
        CHECK(f.send<apir::Handshake>({}, 9) == no_reply);
    }
    // Still serving:
    CHECK(f.send<apir::Handshake>({}) == apir::handshake_magic + 1);
    CHECK(f.mem.canaries_intact());
}

TEST_CASE("in Venus transition mode command types carry +331", "[host]") {
    Fixture f;
    f.options.command_type_offset = apir::venus_command_offset;
    CHECK(f.send<apir::Handshake>({}, page_id, 0) == no_reply);
    CHECK(f.send<apir::Handshake>({}, page_id, apir::venus_command_offset) ==
          apir::handshake_magic + 1);
}

TEST_CASE("LOADLIBRARY answers every outcome of the reference host", "[host][load]") {
    SECTION("configuration key missing: 3") {
        Fixture f("");
        CHECK(f.load() == 3 + 1);
    }
    SECTION("path that does not exist: 4") {
        Fixture f("/nonexistent/libnothing.so");
        CHECK(f.load() == 4 + 1);
    }
    SECTION("path that is a directory: 4") {
        Fixture f(APIR_TEST_DEMO_DIR);
        CHECK(f.load() == 4 + 1);
    }
    SECTION("a file that is not a library: 4") {
        Fixture f(APIR_TEST_BACKEND_NOT_A_LIBRARY);
        CHECK(f.load() == 4 + 1);
        CHECK_FALSE(f.h().library_loaded());
    }
    SECTION("a library without the dispatcher: 5, and initialize is never called") {
        Fixture f(APIR_TEST_BACKEND_MISSING_SYMBOL);
        CHECK(f.load() == 5 + 1);
        void* h = dlopen(APIR_TEST_BACKEND_MISSING_SYMBOL, RTLD_NOW);
        REQUIRE(h);
        auto count = reinterpret_cast<int (*)()>(dlsym(h, "missing_symbol_backend_initialized"));
        REQUIRE(count);
        CHECK(count() == 0);
        dlclose(h);
    }
    SECTION("initialize results map as the reference host maps them") {
        struct Case {
            const char* init_result;
            uint32_t code;
        };
        for (auto c : {Case{"0", 0}, Case{"6", 0}, Case{"1", 7}, Case{"3", 9}, Case{"4", 10},
                       Case{"5", 11}, Case{"14", 14 + 6}, Case{"15", 15 + 6}, Case{"99", 99 + 6}}) {
            Fixture f(APIR_TEST_BACKEND_FAILING);
            f.options.config["test.init_result"] = c.init_result;
            INFO("initialize returned " << c.init_result);
            CHECK(f.load() == c.code + 1);
            CHECK(f.h().library_loaded() == (c.code == 0));
        }
    }
    SECTION("a second LOADLIBRARY: 2, and the first library stays") {
        Fixture f;
        CHECK(f.load() == 0 + 1);
        CHECK(f.load() == 2 + 1);
        CHECK(f.h().library_loaded());
    }
    SECTION("a failed initialize leaves no library loaded; a new context may load it") {
        Fixture f(APIR_TEST_BACKEND_FAILING);
        f.options.config["test.init_result"] = "14";
        CHECK(f.load() == 20 + 1);
        CHECK_FALSE(f.h().library_loaded());
        f.options.config["test.init_result"] = "6";
        f.host.reset(); // a new context with a configuration that works
        CHECK(f.load() == 0 + 1);
    }
}

// How often `part` occurs in `text`.
static size_t occurrences(const std::string& text, std::string_view part) {
    size_t n = 0;
    for (size_t at = text.find(part); at != std::string::npos; at = text.find(part, at + 1))
        ++n;
    return n;
}

TEST_CASE("a failed LOADLIBRARY says why in words the guest's code does not already say",
          "[host][load]") {
    SECTION("a path that does not exist") {
        Fixture f("/nonexistent/libnothing.so");
        CHECK(f.load() == 4 + 1);
        CHECK(f.h().load_library_failure() ==
              "'/nonexistent/libnothing.so' does not exist (no such file)");
    }
    SECTION("a bare library name: the host does not search the loader's path") {
        Fixture f("libapir-no-such-backend.so");
        CHECK(f.load() == 4 + 1);
        CHECK(f.h().load_library_failure() ==
              "'libapir-no-such-backend.so' does not exist (no such file); give the library's "
              "full path");
    }
    SECTION("a directory") {
        Fixture f(APIR_TEST_DEMO_DIR);
        CHECK(f.load() == 4 + 1);
        CHECK_THAT(f.h().load_library_failure(),
                   Catch::Contains("is not a regular file but a directory"));
    }
    SECTION("a library that is not an APIR backend") {
        Fixture f(APIR_TEST_BACKEND_MISSING_SYMBOL);
        CHECK(f.load() == 5 + 1);
        CHECK_THAT(f.h().load_library_failure(),
                   Catch::Contains("lacks apir_backend_dispatcher: it is not an APIR backend "
                                   "library ('apir.load_library.path' must name one"));
    }
    SECTION("a failed initialize: the library in the detail, the code once") {
        for (const char* result : {"5", "14"}) {
            Fixture f(APIR_TEST_BACKEND_FAILING);
            f.options.config["test.init_result"] = result;
            std::vector<std::string> logged;
            f.options.logger = apir::Logger(
                [&](apir::LogLevel, std::string_view line) { logged.emplace_back(line); });
            const uint32_t word = f.load();
            REQUIRE(word > 1);
            INFO("initialize returned " << result);
            const std::string why = f.h().load_library_failure();
            CHECK(why == fmt::format("'{}' failed to initialize", APIR_TEST_BACKEND_FAILING));
            // What a guest whose host runs in-process reads: the decoded code's detail and
            // the host's reason side by side. The returned value appears once.
            const apir::Error e = apir::load_library_error(word - 1);
            const std::string both = e.detail() + "; " + why;
            CHECK(occurrences(both, "apir_backend_initialize returned") <= 1);
            CHECK(occurrences(both, APIR_TEST_BACKEND_FAILING) == 1);
            // The host's own log keeps the number next to the library.
            REQUIRE(logged.size() == 1);
            CHECK_THAT(logged[0], Catch::Contains(fmt::format(
                                      "(apir_backend_initialize returned {})", result)));
        }
    }
}

TEST_CASE("the backend's deinit runs when the host goes away", "[host][load]") {
    void* h = dlopen(APIR_TEST_BACKEND_FAILING, RTLD_NOW);
    REQUIRE(h);
    auto deinits = reinterpret_cast<int (*)()>(dlsym(h, "failing_backend_deinit_calls"));
    REQUIRE(deinits);
    const int before = deinits();
    {
        Fixture f(APIR_TEST_BACKEND_FAILING);
        CHECK(f.load() == 0 + 1);
        CHECK(deinits() == before);
    }
    CHECK(deinits() == before + 1);
    dlclose(h);
}

TEST_CASE("get_config hands the backend the host's configuration", "[host][load]") {
    // The failing backend returns the number it reads under "test.init_result".
    Fixture f(APIR_TEST_BACKEND_FAILING);
    f.options.config["test.init_result"] = "17";
    CHECK(f.load() == 17 + 6 + 1);
}

TEST_CASE("FORWARD reaches the backend only after LOADLIBRARY", "[host][forward]") {
    Fixture f;
    CHECK(f.send<demo::Add>(demo::AddRequest{1, 2}) == 1 + 1); // no dispatch
    REQUIRE(f.load() == 1);
    CHECK(f.send<demo::Add>(demo::AddRequest{1, 2}) == 4 + 1);
    CHECK(decode_reply<demo::AddReply>(f.mem).sum == 3);
    CHECK(f.send<demo::Fail>(demo::FailRequest{9}) == 4 + 9 + 1);
    CHECK(f.send<apir::Forward<1234, apir::Empty>>({}) == 4 + apir::forward_invalid_index + 1);
    CHECK(f.h().stats().forwards == 4);
}

TEST_CASE("backends resolve blobs with a checked, sized look-up", "[host][forward]") {
    Fixture f;
    REQUIRE(f.load() == 1);
    auto blob = f.mem.resource(blob_id);
    demo::fill_pattern(blob.data(), blob.size(), 5);
    CHECK(f.send<demo::Checksum>(demo::BlobRange{blob_id, 0, blob.size(), 0}) == 4 + 1);
    CHECK(decode_reply<demo::ChecksumReply>(f.mem).checksum ==
          demo::checksum(blob.data(), blob.size()));
    // Unknown resource and a range past the blob's end are refused by the backend.
    CHECK(f.send<demo::Checksum>(demo::BlobRange{77, 0, 16, 0}) ==
          4 + demo::error_bad_resource + 1);
    CHECK(f.send<demo::Checksum>(demo::BlobRange{blob_id, 8, blob.size(), 0}) ==
          4 + demo::error_bad_resource + 1);

    auto s = f.h().shmem(blob_id);
    REQUIRE(s);
    CHECK(s->size() == blob.size());
    CHECK(f.h().shmem(77).error() == apir::Errc::unknown_resource);
    CHECK(apir::Host::shmem_for_context(f.h().context_id(), blob_id));
    CHECK(!apir::Host::shmem_for_context(0xffffffu, blob_id));
}

TEST_CASE("a reply larger than the page fails in the backend, never past the page",
          "[host][forward]") {
    Fixture f;
    REQUIRE(f.load() == 1);
    CHECK(f.send<demo::Big>(demo::BigReplyRequest{64 * 1024}) ==
          4 + demo::error_reply_overflow + 1);
    CHECK(f.send<demo::Big>(demo::BigReplyRequest{100}) == 4 + 1);
    CHECK(decode_reply<demo::BigReply>(f.mem).data.size() == 100);
    CHECK(f.mem.canaries_intact());
}

TEST_CASE("two hosts in one process keep their own contexts", "[host]") {
    Fixture a, b;
    a.options.config["x"] = "a";
    CHECK(a.load() == 1);
    CHECK(b.load() == 1);
    CHECK(a.h().context_id() != b.h().context_id());
    CHECK(a.send<demo::Add>(demo::AddRequest{1, 1}) == 5);
    b.host.reset();
    CHECK(a.send<demo::Add>(demo::AddRequest{2, 2}) == 5);
    CHECK(decode_reply<demo::AddReply>(a.mem).sum == 4);
}

// Reliability regression (RELIABILITY.md, bugs found): the registry's look-up returned
// a raw pointer that another thread's host destruction could free while in use.
TEST_CASE("looking a host up by context while hosts come and go never touches a destroyed host",
          "[host][reliability]") {
    std::atomic<uint32_t> latest{0};
    std::atomic<bool> stop{false};
    std::atomic<uint64_t> found{0};
    std::thread looker([&] {
        // Each of the hosts alive in turn, the next to be destroyed among them.
        for (uint32_t k = 0; !stop.load(std::memory_order_relaxed); ++k) {
            const uint32_t ctx = latest.load(std::memory_order_relaxed) - (k & 3);
            if (apir::Host::shmem_for_context(ctx, page_id)) found.fetch_add(1);
        }
    });
    // A few hosts alive at a time, the oldest destroyed as each new one comes.
    struct Live {
        TestMemory mem;
        std::unique_ptr<apir::Host> host;
    };
    std::array<Live, 4> ring;
    // At least 20,000 rounds, and on until the looker has found a live host once (on a
    // crowded machine it may not have run yet), within 20 s.
    const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    for (int i = 0; i < 20000 || (found.load() == 0 && std::chrono::steady_clock::now() < give_up);
         ++i) {
        Live& l = ring[static_cast<size_t>(i) % ring.size()];
        l.host.reset();
        l.mem.add(page_id, apir::reply_page_size);
        apir::HostOptions o;
        o.logger = apir::Logger(nullptr);
        l.host = std::make_unique<apir::Host>(o, l.mem);
        latest.store(l.host->context_id(), std::memory_order_relaxed);
    }
    stop = true;
    looker.join();
    CHECK(found.load() > 0);
}

TEST_CASE("execute_in_place hands the backend the command's own bytes; execute a copy", "[host]") {
    Fixture f(APIR_TEST_BACKEND_FAILING);
    REQUIRE(f.load() == 0 + 1); // LOADLIBRARY: success
    std::array<std::byte, 64> buf{};
    apir::Encoder e(buf);
    e.put(apir::CommandHeader{static_cast<int32_t>(apir::CommandType::forward), 1, page_id});
    e.write_u64(42); // a payload to decode
    REQUIRE(e.ok());
    const auto cmd = std::span<std::byte>(buf.data(), e.written().size());
    const auto where = [&] {
        uint64_t w = 0;
        std::memcpy(&w, f.mem.reply().data(), 8);
        return w;
    };
    const auto payload = reinterpret_cast<uintptr_t>(cmd.data() + apir::command_header_size);

    REQUIRE(f.h().execute_in_place(cmd));
    CHECK(f.mem.word() != no_reply);
    CHECK(where() == payload); // decoded in place: no copy

    apir::notification_word(f.mem.resource(page_id)).store(0);
    REQUIRE(f.h().execute(cmd));
    CHECK(f.mem.word() != no_reply);
    CHECK(where() != payload); // the host's own copy
}

// Reliability regression: one warning per dropped command let a guest fill the log.
TEST_CASE("100,000 dropped commands are all counted and logged a few times, not 100,000",
          "[host][reliability]") {
    Fixture f;
    std::atomic<size_t> lines{0};
    std::string last;
    f.options.logger = apir::Logger(
        [&](apir::LogLevel, std::string_view m) {
            ++lines;
            last = m;
        },
        apir::LogLevel::debug);
    const std::array<std::byte, 4> truncated{};
    const auto start = std::chrono::steady_clock::now();
    for (int i = 0; i < 100000; ++i)
        (void)f.h().execute(truncated);
    const auto took = std::chrono::steady_clock::now() - start;
    CHECK(f.h().stats().rejected == 100000);
    // The first, then at most one per interval (1 s by default) with the count since.
    const auto seconds = std::chrono::duration_cast<std::chrono::seconds>(took).count();
    INFO(lines.load() << " lines in " << seconds << " s; last: " << last);
    CHECK(lines.load() >= 1);
    CHECK(lines.load() <= static_cast<size_t>(2 + seconds));
    // A bogus LOADLIBRARY flood is limited the same way.
    REQUIRE(f.load() == 1);
    lines = 0;
    for (int i = 0; i < 1000; ++i)
        CHECK(f.load() == 1 + static_cast<uint32_t>(apir::LoadLibraryCode::already_loaded));
    CHECK(lines.load() <= 3);
}

TEST_CASE("host configuration text: key=value items, verbatim, the bad item named", "[host]") {
    apir::HostConfig c{{"keep", "1"}};
    REQUIRE(apir::parse_host_config("a=1;;b=x=y;a=2;p=/a b/lib.so;e=", ';', c));
    CHECK(c == apir::HostConfig{
                   {"keep", "1"}, {"a", "2"}, {"b", "x=y"}, {"p", "/a b/lib.so"}, {"e", ""}});
    apir::HostConfig lines;
    REQUIRE(apir::parse_host_config("k=v\nl=w\n", '\n', lines));
    CHECK(lines.size() == 2);
    for (auto [bad, sep] :
         {std::pair{"a=1;novalue", ';'}, std::pair{"=v", ';'}, std::pair{"a=1\n=x", '\n'}}) {
        apir::HostConfig out;
        auto r = apir::parse_host_config(bad, sep, out);
        REQUIRE_FALSE(r);
        CHECK(r.error() == apir::Errc::invalid_argument);
        CHECK_THAT(r.error().detail(), Catch::Contains("is not key=value"));
    }
}

TEST_CASE("log levels are parsed by their names", "[host]") {
    for (auto l : {apir::LogLevel::debug, apir::LogLevel::info, apir::LogLevel::warn,
                   apir::LogLevel::error, apir::LogLevel::off})
        CHECK(apir::parse_log_level(apir::log_level_name(l)) == l);
    CHECK_FALSE(apir::parse_log_level("verbose"));
    CHECK_FALSE(apir::parse_log_level("DEBUG"));
    CHECK_FALSE(apir::parse_log_level(""));
}
