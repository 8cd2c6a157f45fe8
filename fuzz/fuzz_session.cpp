// Fuzz target: the guest session fed hostile replies.
//
// A scripted transport plays a hostile host: the input decides, call by call,
// whether shared memory can be created, whether a submission fails, and what the
// reply page holds when the guest looks (the notification word, i.e. return code + 1,
// and the reply payload bytes: lying sizes, strings without NUL, anything). A reply
// is read by the library's wait_for_reply on that page; a silent host times out at
// once.
//
// Input: byte 0 picks session options; then, per call, one byte picks the call
// (connect, HANDSHAKE, LOADLIBRARY, demo calls, staging) and the transport reads what
// it needs from the rest as the call goes. Every call must end in a value or a named
// error; decoded replies respect the allocation cap; every blob is released exactly
// once when the session goes away.
#include <apir/session.hpp>

#include "demo_protocol.hpp"

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <vector>

namespace {

[[noreturn]] void violated(const char* what) {
    fmt::print(stderr, "fuzz-session: invariant violated: {}\n", what);
    std::abort();
}
void require(bool ok, const char* what) {
    if (!ok) violated(what);
}

/// Reads the fuzzer's bytes; past the end, zeros.
class Script {
public:
    explicit Script(std::span<const uint8_t> in) : in_(in) {}
    bool empty() const { return in_.empty(); }
    uint8_t u8() {
        if (in_.empty()) return 0;
        uint8_t v = in_[0];
        in_ = in_.subspan(1);
        return v;
    }
    uint32_t u32() {
        uint32_t v = 0;
        for (int i = 0; i < 4; ++i)
            v |= uint32_t{u8()} << (8 * i);
        return v;
    }
    std::span<const uint8_t> bytes(size_t n) {
        n = std::min(n, in_.size());
        auto b = in_.first(n);
        in_ = in_.subspan(n);
        return b;
    }

private:
    std::span<const uint8_t> in_;
};

/// The hostile host's memory: exact-size heap blobs, so ASan sees any overrun.
struct Blobs final : apir::ShmemOwner {
    std::map<uint32_t, std::span<std::byte>> live;
    std::map<uint32_t, std::unique_ptr<std::byte[]>> memory;
    uint32_t next_id = 2;
    const std::shared_ptr<apir::ShmemLink> link = apir::ShmemLink::make(*this);

    Blobs() = default;
    Blobs(const Blobs&) = delete; // the link names this object
    Blobs& operator=(const Blobs&) = delete;

    void release_shmem(uint32_t id) noexcept override {
        if (live.erase(id) != 1) violated("a blob was released twice or never created");
        memory.erase(id);
    }
};

class HostileTransport final {
public:
    HostileTransport(Script& s, Blobs& b) : script_(&s), blobs_(&b) {}

    apir::Expected<apir::Shmem> create_shmem(size_t n) {
        if (n == 0 || n > (size_t{1} << 22)) violated("the session asked for odd shared memory");
        if (script_->u8() == 0xff) return apir::fail(apir::Errc::out_of_memory, "scripted");
        const size_t rounded = (n + apir::shmem_alignment - 1) & ~(apir::shmem_alignment - 1);
        const uint32_t id = blobs_->next_id++;
        // Left uninitialized (a 1 MiB staging blob is made often); the session resets
        // the notification word before every use.
        auto& m = blobs_->memory[id];
        m.reset(new std::byte[rounded]);
        std::span<std::byte> b(m.get(), rounded);
        blobs_->live[id] = b;
        return apir::Shmem(blobs_->link, id, b);
    }

    apir::Expected<void> submit(std::span<const std::byte> cmd, uint32_t, apir::Deadline) {
        require(cmd.size() >= apir::command_header_size, "the session sent a truncated command");
        apir::Decoder d(cmd);
        (void)d.read_u64();
        const uint32_t reply = d.read_u32();
        require(blobs_->live.count(reply) == 1, "the command names a reply page that is not live");
        last_reply_ = reply;
        if (script_->u8() == 0xff) return apir::fail(apir::Errc::device_error, "scripted");
        return {};
    }

    apir::Expected<uint32_t> wait_reply(const apir::Shmem& page, const apir::WaitPolicy&,
                                        apir::Deadline) {
        require(page.res_id() == last_reply_, "the session waits on another page than it sent");
        auto bytes = page.bytes();
        switch (script_->u8() & 3) {
        case 0: // silent: the wait times out (wait_for_reply would spin a while first)
            return apir::fail(apir::Errc::timeout, "scripted");
        case 1: // the host died
            return apir::fail(apir::Errc::disconnected, "scripted");
        case 2: { // late replies land in every other page, this one stays silent
            for (auto& [id, b] : blobs_->live)
                if (id != page.res_id() && b.size() >= 4) apir::notification_word(b).store(1);
            return apir::fail(apir::Errc::timeout, "scripted");
        }
        default: { // a reply: fuzzer word and payload
            const uint32_t word = script_->u32();
            const size_t len = script_->u8() | size_t{script_->u8()} << 8;
            auto payload = script_->bytes(std::min(len, bytes.size() - apir::reply_header_size));
            if (!payload.empty())
                std::memcpy(bytes.data() + apir::reply_header_size, payload.data(), payload.size());
            apir::notification_word(bytes).store(word, std::memory_order_release);
        }
        }
        return apir::wait_for_reply(bytes, apir::WaitPolicy::adaptive(),
                                    apir::Deadline::at(apir::Clock::now()));
    }

    int32_t command_type_offset() const noexcept { return 0; }
    std::string_view name() const noexcept { return "hostile"; }

private:
    Script* script_;
    Blobs* blobs_;
    uint32_t last_reply_ = 0;
};
static_assert(apir::Transport<HostileTransport>);

template <class T>
void check(const apir::Expected<T>& r) {
    if (r) return;
    const apir::Error& e = r.error();
    require(e.code() < apir::Errc::count_, "an error without a code");
    require(e.name() != "UNKNOWN_ERROR", "an unnamed error");
    (void)e.message();
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    Script script({data, size});
    Blobs blobs;
    {
        const uint8_t opt = script.u8();
        apir::SessionOptions so;
        so.logger = apir::Logger(nullptr);
        so.command_buffer_size = (opt & 1) ? 64 : 4096;
        so.max_reply_alloc = (opt & 2) ? 100 : apir::reply_page_size;
        so.wait = apir::WaitPolicy::adaptive();
        apir::Session<HostileTransport> s(HostileTransport(script, blobs), so);

        for (int i = 0; i < 32 && !script.empty(); ++i) {
            switch (script.u8() % 10) {
            case 0:
                check(s.connect());
                break;
            case 1:
                check(s.call<apir::Handshake>(apir::HandshakeRequest{}));
                break;
            case 2:
                check(s.call<apir::LoadLibrary>(apir::Empty{}));
                break;
            case 3: {
                auto r = s.call<demo::Echo>(demo::EchoRequest{script.u32(), "hello"});
                check(r);
                if (r) require(r->text.size() + 1 <= so.max_reply_alloc, "string past the cap");
                break;
            }
            case 4:
                check(s.call<demo::Add>(demo::AddRequest{1, 2}));
                break;
            case 5:
                check(s.call<demo::Checksum>(demo::BlobRange{3, 0, 16, 0}));
                break;
            case 6:
                check(s.call<demo::Fail>(demo::FailRequest{script.u32()}));
                break;
            case 7: {
                auto r = s.call<demo::Big>(demo::BigReplyRequest{script.u32()});
                check(r);
                if (r) require(r->data.size() <= so.max_reply_alloc, "vector past the cap");
                break;
            }
            case 8:
                check(s.call<demo::Fill>(demo::BlobRange{3, 0, 16, 1}));
                break;
            default: {
                auto st = s.stage(size_t{script.u8()} << 8);
                check(st);
                if (st)
                    check(s.call<demo::Checksum>(demo::BlobRange{st->res_id(), 0, st->size(), 0}));
            }
            }
        }
    }
    require(blobs.live.empty(), "the session leaked shared memory");
    return 0;
}
