// VtestTransport against virglrenderer's own APIR host (virgl_test_server in
// $APIR_VIRGL_PEER_DIR, loading the demo backend), and against small socket servers of
// this test that misbehave: no server, one that never answers, one that stops reading,
// a server child killed in the middle of calls, a command the host drops.
// Skips (77) without APIR_VIRGL_PEER_DIR. The cases tagged [demo] have the server load the
// demo backend of this build: a sanitized build's cannot be loaded by the (unsanitized)
// server, so sanitizer builds leave them out.
#define CATCH_CONFIG_RUNNER
#include "catch.hpp"

#include "vtest_server.hpp"

#include <apir/reply_page.hpp>
#include <apir/session.hpp>
#include <apir/vtest.hpp>

#include "demo_protocol.hpp"

#include <sched.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include <atomic>
#include <cstring>
#include <memory>
#include <span>
#include <thread>
#include <vector>

using namespace std::chrono_literals;
using apir::Errc;
using apir_test::VtestServer;
using Session = apir::Session<apir::VtestTransport>;

namespace {

apir::VtestOptions options_for(const std::string& path) {
    apir::VtestOptions o;
    o.socket_path = path;
    o.logger = apir::Logger(nullptr);
    return o;
}

std::map<std::string, std::string, std::less<>> demo_config() {
    return {{"apir.load_library.path", APIR_TEST_BACKEND_DEMO}};
}

apir::SessionOptions quiet_session() {
    apir::SessionOptions s;
    s.logger = apir::Logger(nullptr);
    return s;
}

// A session on a new connection to the server, connected (its host loads the demo
// backend).
std::unique_ptr<Session> connected_session(const VtestServer& server) {
    auto t = apir::VtestTransport::open(options_for(server.socket_path()));
    REQUIRE(t);
    auto s = std::make_unique<Session>(std::move(*t), quiet_session());
    REQUIRE(s->connect());
    return s;
}

// `calls` demo Sleeps of `ms` milliseconds each, every one answered.
void sleep_calls(Session& s, int calls, uint32_t ms) {
    for (int i = 0; i < calls; ++i) {
        apir::CallOptions co;
        co.deadline = apir::Deadline::after(10s);
        REQUIRE(s.call<demo::Sleep>(demo::SleepRequest{ms}, co));
    }
}

double ms_since(apir::Clock::time_point t) {
    return std::chrono::duration<double, std::milli>(apir::Clock::now() - t).count();
}

// Runs a call that must fail with TIMEOUT after at least `at_least_ms` and before
// `under_ms` (the deadline held: not sooner, not much later).
template <class Call>
void times_out(Call&& call, double at_least_ms, double under_ms) {
    const auto start = apir::Clock::now();
    const auto r = call();
    const double took = ms_since(start);
    REQUIRE_FALSE(r);
    CHECK(r.error() == Errc::timeout);
    CHECK(took >= at_least_ms);
    CHECK(took < under_ms);
}

// A Unix socket server of this test in a thread: accepts one client; answers the vtest
// opening (version 4, the APIR capset) unless silent; then either does nothing (neither
// reads nor answers again) or answers every PING and runs no command. serves_blobs
// also answers RESOURCE_CREATE_BLOB with a memfd of its own (sealing allowed or not,
// kept in blob_fd() so the test can truncate it as a hostile server would).
// stores_replies answers no PING and, for every SUBMIT_CMD2, stores code 0 in the
// notification word of `page` (the test's own memory), as the real host does.
// blobs_no_pings serves blobs and answers no PING. Every mode that reads on records the
// ids of the RESOURCE_UNREFs it reads (unrefs()). `opening` bends the opening's answers
// as a hostile server would.
struct Opening {
    uint32_t version = 4;           // the protocol version granted
    uint32_t capset_words = 7;      // the APIR capset's answer, in words (blobs: its third)
    bool context_ping_data = false; // the PING after CONTEXT_INIT answered with a word
    uint32_t blob_delay_ms = 0;     // later: each blob's answer sent this late
};
class SilentServer {
public:
    enum Mode {
        silent,
        opens_then_silent,
        answers_pings,
        serves_blobs,
        stores_replies,
        blobs_no_pings
    };
    using Opening = ::Opening;
    explicit SilentServer(Mode mode, bool allow_sealing = true, std::span<std::byte> page = {},
                          Opening opening = {}) {
        char tmpl[] = "/tmp/apir-vtest-silent-XXXXXX";
        REQUIRE(::mkdtemp(tmpl));
        dir_ = tmpl;
        path_ = dir_ + "/s.sock";
        listen_fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        sockaddr_un a{};
        a.sun_family = AF_UNIX;
        std::strncpy(a.sun_path, path_.c_str(), sizeof a.sun_path - 1);
        REQUIRE(::bind(listen_fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
        REQUIRE(::listen(listen_fd_, 4) == 0);
        thread_ = std::thread([this, mode, allow_sealing, page, opening] {
            client_ = ::accept(listen_fd_, nullptr, nullptr);
            if (client_ < 0 || mode == silent) return;
            // CREATE_RENDERER (length in bytes), PING, PROTOCOL_VERSION, GET_CAPSET,
            // CONTEXT_INIT, PING: answer the four that have answers.
            uint32_t h[2];
            std::vector<char> skip;
            for (int i = 0; i < 6; ++i) {
                if (!read_all(h, 8)) return;
                const size_t len = i == 0 ? h[0] : size_t{h[0]} * 4;
                skip.resize(len);
                if (len && !read_all(skip.data(), len)) return;
                switch (h[1]) {
                case 10:
                    if (i == 5 && opening.context_ping_data)
                        write_words(std::vector<uint32_t>{1, 10, 0});
                    else
                        write_words({0, 10});
                    break;
                case 11:
                    write_words(std::vector<uint32_t>{1, 11, opening.version});
                    break;
                case 16: {
                    std::vector<uint32_t> caps = {opening.capset_words, 16, 1, 1, 1, 0, 0, 0, 0};
                    caps.resize(2 + opening.capset_words);
                    write_words(caps);
                    break;
                }
                default:
                    break;
                }
            }
            const bool blobs = mode == serves_blobs || mode == blobs_no_pings;
            while ((mode == answers_pings || blobs || mode == stores_replies) && read_all(h, 8)) {
                skip.resize(size_t{h[0]} * 4);
                if (!skip.empty() && !read_all(skip.data(), skip.size())) return;
                if (h[1] == 24 && mode == stores_replies) apir::notify_reply(page, 0, nullptr);
                if (h[1] == 10 && (mode == answers_pings || mode == serves_blobs))
                    write_words({0, 10});
                if (h[1] == 3 && skip.size() >= 4) {
                    uint32_t id = 0;
                    std::memcpy(&id, skip.data(), 4);
                    std::lock_guard lk(mu_);
                    unrefs_.push_back(id);
                }
                if (h[1] == 18 && blobs && skip.size() >= 24) {
                    uint64_t size = 0;
                    std::memcpy(&size, skip.data() + 8, 8);
                    const int m = ::memfd_create(
                        "fake-blob", MFD_CLOEXEC | (allow_sealing ? MFD_ALLOW_SEALING : 0u));
                    if (m < 0 || ::ftruncate(m, static_cast<off_t>(size)) != 0) return;
                    if (opening.blob_delay_ms)
                        std::this_thread::sleep_for(
                            std::chrono::milliseconds(opening.blob_delay_ms));
                    if (blob_fd_ >= 0) ::close(blob_fd_);
                    blob_fd_ = m;
                    write_words({1, 18, next_id_++});
                    send_fd(m);
                }
            }
        });
    }
    ~SilentServer() {
        ::shutdown(listen_fd_, SHUT_RDWR);
        thread_.join();
        if (blob_fd_ >= 0) ::close(blob_fd_);
        if (client_ >= 0) ::close(client_);
        ::close(listen_fd_);
        std::error_code ec;
        std::filesystem::remove_all(dir_, ec);
    }
    [[nodiscard]] const std::string& path() const { return path_; }
    // The last blob's memfd (serves_blobs), valid once create_shmem returned.
    [[nodiscard]] int blob_fd() const { return blob_fd_; }
    // The resource ids of the RESOURCE_UNREFs read so far.
    [[nodiscard]] std::vector<uint32_t> unrefs() const {
        std::lock_guard lk(mu_);
        return unrefs_;
    }
    // Waits up to 5 s for the server to have read `n` RESOURCE_UNREFs.
    [[nodiscard]] std::vector<uint32_t> unrefs_when(size_t n) const {
        for (int i = 0; i < 500 && unrefs().size() < n; ++i)
            std::this_thread::sleep_for(10ms);
        return unrefs();
    }

private:
    bool read_all(void* p, size_t n) {
        auto* c = static_cast<char*>(p);
        while (n) {
            const ssize_t r = ::read(client_, c, n);
            if (r <= 0) return false;
            c += r;
            n -= static_cast<size_t>(r);
        }
        return true;
    }
    void send_fd(int f) {
        char byte = 0;
        iovec iov{&byte, 1};
        alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
        msghdr msg{};
        msg.msg_iov = &iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control;
        msg.msg_controllen = sizeof control;
        cmsghdr* c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int));
        std::memcpy(CMSG_DATA(c), &f, sizeof f);
        (void)!::sendmsg(client_, &msg, MSG_NOSIGNAL);
    }
    void write_words(std::initializer_list<uint32_t> w) { write_words(std::vector<uint32_t>(w)); }
    void write_words(const std::vector<uint32_t>& v) {
        (void)!::write(client_, v.data(), v.size() * 4);
    }
    std::string dir_, path_;
    int listen_fd_ = -1;
    int client_ = -1;
    std::atomic<int> blob_fd_{-1};
    uint32_t next_id_ = 7; // the resource id of the next blob served
    mutable std::mutex mu_;
    std::vector<uint32_t> unrefs_;
    std::thread thread_;
};

// A connection to one of these servers, its blob steps bounded by io_timeout.
apir::VtestTransport open_on(const SilentServer& s, std::chrono::nanoseconds io_timeout) {
    auto o = options_for(s.path());
    o.io_timeout = io_timeout;
    auto t = apir::VtestTransport::open(o);
    REQUIRE(t);
    return std::move(*t);
}

std::vector<std::byte> raw_command(int32_t type, int32_t flags, uint32_t reply_id) {
    std::vector<std::byte> c(apir::command_header_size + 4);
    std::memcpy(c.data(), &type, 4);
    std::memcpy(c.data() + 4, &flags, 4);
    std::memcpy(c.data() + 8, &reply_id, 4);
    return c;
}

} // namespace

TEST_CASE("open: no server at the path is NO_DEVICE, naming the path and the fix", "[open]") {
    const std::string path = "/tmp/apir-vtest-nothing-here.sock";
    const auto start = apir::Clock::now();
    auto t = apir::VtestTransport::open(options_for(path));
    REQUIRE_FALSE(t);
    CHECK(t.error() == Errc::no_device);
    CHECK(t.error().message().find(path) != std::string::npos);
    CHECK(t.error().message().find("virgl_test_server") != std::string::npos);
    CHECK(ms_since(start) < 1000);
}

TEST_CASE("open: a server that accepts and never answers is TIMEOUT at the deadline", "[open]") {
    SilentServer s(SilentServer::silent);
    auto o = options_for(s.path());
    o.connect_timeout = 200ms;
    times_out([&] { return apir::VtestTransport::open(o); }, 200, 2000);
}

TEST_CASE("a server that stops answering and reading: calls end at their deadlines", "[faults]") {
    SilentServer s(SilentServer::opens_then_silent);
    auto t = apir::VtestTransport::open(options_for(s.path()));
    REQUIRE(t);
    CHECK(t->protocol_version() == 4);

    // wait_reply: the PING barrier gets no answer; TIMEOUT at the deadline.
    std::vector<std::byte> page_bytes(apir::reply_page_size);
    apir::Shmem page(nullptr, 1, page_bytes);
    auto cmd = raw_command(2, 0, 1);
    REQUIRE(t->submit(cmd, 1, apir::Deadline::after(1s)));
    times_out([&] { return t->wait_reply(page, apir::WaitPolicy{}, apir::Deadline::after(100ms)); },
              100, 2000);

    // submit: the server reads nothing, the socket buffer fills, the send waits for room
    // until the deadline.
    std::vector<std::byte> big(1 << 20);
    const auto start = apir::Clock::now();
    apir::Expected<void> sent;
    for (int i = 0; i < 64 && sent; ++i)
        sent = t->submit(big, 0, apir::Deadline::after(100ms));
    const double took = ms_since(start);
    REQUIRE_FALSE(sent);
    CHECK(sent.error() == Errc::timeout);
    CHECK(took < 10000);
    // A message cut by the deadline cannot be finished: the connection is given up.
    auto after = t->submit(cmd, 1, apir::Deadline::after(100ms));
    REQUIRE_FALSE(after);
    CHECK((after.error() == Errc::disconnected || after.error() == Errc::timeout));
}

TEST_CASE("the real host: a session connects, calls, and moves bulk data", "[host][demo]") {
    VtestServer server(demo_config());
    const auto start = apir::Clock::now();
    auto t = apir::VtestTransport::open(options_for(server.socket_path()));
    REQUIRE(t);
    CHECK(t->protocol_version() >= 3);
    CHECK(t->name() == "vtest");
    Session s(std::move(*t), quiet_session());
    auto c = s.connect();
    INFO((c ? "" : c.error().message()));
    REQUIRE(c);
    INFO("connect through LOADLIBRARY: " << ms_since(start) << " ms");
    CHECK(c->major == 0); // virglrenderer's host reports its own version (0.1)

    auto e = s.call<demo::Echo>(demo::EchoRequest{7, "vtest"});
    REQUIRE(e);
    CHECK(e->tag == 7);
    CHECK(e->text == "vtest");
    auto f = s.call<demo::Fail>(demo::FailRequest{5});
    REQUIRE_FALSE(f);
    CHECK(f.error().wire_code() == 4 + 5);

    std::vector<std::byte> data(5 << 20);
    demo::fill_pattern(data.data(), data.size(), 3);
    auto st = s.stage(data);
    REQUIRE(st);
    auto sum = s.call<demo::Checksum>(demo::BlobRange{st->res_id(), 0, data.size(), 0});
    REQUIRE(sum);
    CHECK(sum->checksum == demo::checksum(data.data(), data.size()));
}

TEST_CASE("a long command's wait blocks in the PING barrier when its forecast measures that way",
          "[host][demo]") {
    // Once a command's forecast is sure of when its reply is due, its waits either rest
    // and watch or block at once in the PING barrier, timed against each other
    // (ArrivalForecast::rest_mode); a measurement starts with blocking, four waits.
    VtestServer server(demo_config());
    auto s = connected_session(server);
    constexpr int calls = 12;
    sleep_calls(*s, calls, 2);
    const auto st = s->transport().stats();
    INFO(st.blocked << " of " << calls << " blocked, " << st.ping_replies << " after a PING, "
                    << st.spin_replies << " in the spin");
    CHECK(st.blocked >= 3);
    CHECK(st.ping_replies >= st.blocked); // each blocked wait got its reply past a PING
    // It still answers: an Echo after them.
    auto e = s->call<demo::Echo>(demo::EchoRequest{9, "after"});
    REQUIRE(e);
    CHECK(e->text == "after");
}

TEST_CASE("a wait that does not rest, for a reply its forecast knows comes after the look, "
          "goes to the PING barrier at once",
          "[host][demo]") {
    // Waking up is made to look late by 400 µs for rests of about a millisecond: the
    // forecast then does not rest for a 1 ms Sleep (it would wake after the reply). Its
    // reply comes after the longest look (50 µs), which cannot win: once the forecast is
    // sure (3 calls), each wait goes to the PING barrier without looking.
    for (int i = 0; i < 200; ++i)
        apir::ArrivalForecast::note_wake(1ms, 400us);
    VtestServer server(demo_config());
    auto s = connected_session(server);
    constexpr int calls = 12;
    sleep_calls(*s, calls, 1);
    const auto st = s->transport().stats();
    INFO(st.blocked << " of " << calls << " went to the PING at once, " << st.spin_replies
                    << " answered in the look");
    CHECK(st.blocked >= calls - 3);
    CHECK(st.ping_replies >= st.blocked);
    for (int i = 0; i < 200; ++i) // the process-wide lateness back to a usual one
        apir::ArrivalForecast::note_wake(1ms, 60us);
}

TEST_CASE("threads whose long waits block in the PING barrier, between short calls: every "
          "reply matches its request",
          "[host][demo]") {
    // One thread's blocked wait holds the connection while it reads its PING's answer;
    // the others' submits and waits queue behind it, and all are answered in order.
    VtestServer server(demo_config());
    auto s = connected_session(server);
    constexpr int threads = 4, rounds = 15;
    std::atomic<int> bad{0}, ok{0};
    std::vector<std::thread> pool;
    for (int th = 0; th < threads; ++th)
        pool.emplace_back([&, th] {
            for (int i = 0; i < rounds; ++i) {
                apir::CallOptions co;
                co.deadline = apir::Deadline::after(20s);
                if (!s->call<demo::Sleep>(demo::SleepRequest{2}, co)) ++bad;
                const uint64_t tag = (uint64_t(th) << 32) | uint32_t(i);
                auto e = s->call<demo::Echo>(demo::EchoRequest{tag, std::to_string(tag)}, co);
                if (!e || e->tag != tag || e->text != std::to_string(tag))
                    ++bad;
                else
                    ++ok;
            }
        });
    for (auto& p : pool)
        p.join();
    const auto st = s->transport().stats();
    INFO(st.blocked << " waits blocked, " << st.ping_replies << " after a PING");
    CHECK(bad == 0);
    CHECK(ok == threads * rounds);
    CHECK(st.blocked >= 3); // Sleep's forecast measured the blocking way at least once
    CHECK(st.dropped == 0); // a reply that came while the lock was taken is no drop
}

TEST_CASE("a command the host runs without a reply fails at once with UNKNOWN_RESOURCE",
          "[faults]") {
    SilentServer server(SilentServer::answers_pings); // answers PINGs, writes no reply
    auto t = apir::VtestTransport::open(options_for(server.path()));
    REQUIRE(t);
    std::vector<std::byte> page_bytes(apir::reply_page_size);
    apir::Shmem page(nullptr, 1, page_bytes);
    apir::reset_notification(page);
    REQUIRE(t->submit(raw_command(2, 0, 1), 1, apir::Deadline::after(5s)));
    const auto start = apir::Clock::now();
    auto r = t->wait_reply(page, apir::WaitPolicy{}, apir::Deadline::after(10s));
    REQUIRE_FALSE(r);
    CHECK(r.error() == Errc::unknown_resource);
    CHECK(ms_since(start) < 2000); // not the deadline
    CHECK(t->stats().dropped == 1);
    // The connection is intact: a PING still goes through.
    CHECK(t->ping(apir::Deadline::after(5s)));
}

TEST_CASE("a command the real host drops (unknown reply page) fails at once", "[faults]") {
    VtestServer server(demo_config());
    auto t = apir::VtestTransport::open(options_for(server.socket_path()));
    REQUIRE(t);
    auto page = t->create_shmem(apir::reply_page_size);
    REQUIRE(page);
    apir::reset_notification(*page);
    // A FORWARD naming a reply page the host does not know: it runs nothing, replies
    // nowhere, and keeps the connection.
    auto cmd = raw_command(2, 0, page->res_id() + 1000);
    REQUIRE(t->submit(cmd, page->res_id() + 1000, apir::Deadline::after(5s)));
    const auto start = apir::Clock::now();
    auto r = t->wait_reply(*page, apir::WaitPolicy{}, apir::Deadline::after(10s));
    // virglrenderer's host treats it as a dispatch error and closes the connection.
    REQUIRE_FALSE(r);
    CHECK(r.error() == Errc::disconnected);
    CHECK(ms_since(start) < 2000); // not the deadline
    auto again = t->create_shmem(16);
    REQUIRE_FALSE(again);
    CHECK(again.error() == Errc::disconnected);
}

TEST_CASE("a server on the waiter's own CPU runs the command while the waiter spins", "[spin]") {
    // The test's thread and the server's (which inherits the binding) on one CPU, as
    // the scheduler often puts virgl_test_server's child on a busy machine: the server
    // runs the command only when the waiter lets it have the CPU. The server answers no
    // PING, so a wait whose spin runs out gets its reply only at its deadline.
    cpu_set_t before;
    REQUIRE(::sched_getaffinity(0, sizeof before, &before) == 0);
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(::sched_getcpu(), &one);
    REQUIRE(::sched_setaffinity(0, sizeof one, &one) == 0);
    struct Restore {
        cpu_set_t set;
        ~Restore() { (void)::sched_setaffinity(0, sizeof set, &set); }
    } restore{before};

    std::vector<std::byte> page_bytes(apir::reply_page_size);
    SilentServer s(SilentServer::stores_replies, true, page_bytes);
    auto t = apir::VtestTransport::open(options_for(s.path()));
    REQUIRE(t);
    apir::Shmem page(nullptr, 1, page_bytes);
    constexpr int calls = 40;
    const auto start = apir::Clock::now();
    for (int i = 0; i < calls; ++i) {
        apir::reset_notification(page);
        REQUIRE(t->submit(raw_command(2, 0, 1), 1, apir::Deadline::after(1s)));
        auto r = t->wait_reply(page, apir::WaitPolicy{}, apir::Deadline::after(200ms));
        REQUIRE(r);
        CHECK(*r == 0);
    }
    const auto st = t->stats();
    INFO(st.spin_replies << " of " << calls << " answered in the spin, " << ms_since(start)
                         << " ms");
    // A spin that kept the CPU: 35-37 of 40 in its spin (the others ran out and waited
    // for the deadline). One that yields between looks: all 40 (the server runs at the
    // first yield) in every run on a 2-CPU machine at a load of 6; two may miss.
    CHECK(st.spin_replies >= calls - 2);
}

TEST_CASE("a server that never answers a PING: a call with no deadline ends with DISCONNECTED "
          "when the transport is closed or destroyed; others keep their deadlines",
          "[faults]") {
    const bool destroy = GENERATE(false, true);
    INFO((destroy ? "destroyed" : "closed"));
    SilentServer s(SilentServer::opens_then_silent);
    auto opened = apir::VtestTransport::open(options_for(s.path()));
    REQUIRE(opened);
    auto t = std::make_unique<apir::VtestTransport>(std::move(*opened));

    std::vector<std::byte> page_bytes(apir::reply_page_size), other_bytes(apir::reply_page_size);
    apir::Shmem page(nullptr, 1, page_bytes), other(nullptr, 2, other_bytes);
    REQUIRE(t->submit(raw_command(2, 0, 1), 1, apir::Deadline::after(1s)));

    // The waiter: no deadline (ggml's graph_compute), the PING barrier never answered.
    std::atomic<bool> done{false};
    apir::Expected<uint32_t> stuck = 0u;
    apir::Clock::time_point ended{};
    std::thread waiter([&] {
        stuck = t->wait_reply(page, apir::WaitPolicy{}, apir::Deadline::never());
        ended = apir::Clock::now();
        done = true;
    });
    std::this_thread::sleep_for(300ms);
    REQUIRE_FALSE(done.load());

    // Another caller, with a deadline, while the waiter holds the connection: TIMEOUT at
    // its deadline, not later.
    times_out(
        [&] { return t->wait_reply(other, apir::WaitPolicy{}, apir::Deadline::after(200ms)); }, 200,
        1500);
    times_out([&] { return t->ping(apir::Deadline::after(200ms)); }, 200, 1500);
    CHECK_FALSE(done.load());

    // Closing (or destroying) the transport ends the wait with DISCONNECTED.
    const auto start = apir::Clock::now();
    if (destroy)
        t.reset(); // waits for the waiter to leave
    else
        t->close();
    waiter.join();
    const double to_end = std::chrono::duration<double, std::milli>(ended - start).count();
    REQUIRE_FALSE(stuck);
    CHECK(stuck.error() == Errc::disconnected);
    CHECK(to_end < 2000);
    if (!destroy) {
        auto later = t->submit(raw_command(2, 0, 1), 1, apir::Deadline::after(1s));
        REQUIRE_FALSE(later);
        CHECK(later.error() == Errc::disconnected);
        auto blob = t->create_shmem(16);
        REQUIRE_FALSE(blob);
        CHECK(blob.error() == Errc::disconnected);
    }
}

TEST_CASE("a server cannot shrink a blob under the guest's mapping (no SIGBUS)", "[faults]") {
    SilentServer s(SilentServer::serves_blobs);
    auto t = apir::VtestTransport::open(options_for(s.path()));
    REQUIRE(t);
    auto blob = t->create_shmem(64 * 1024);
    REQUIRE(blob);
    REQUIRE(s.blob_fd() >= 0);
    // The hostile server truncates its memfd: refused, the file keeps its size.
    CHECK(::ftruncate(s.blob_fd(), 0) != 0);
    CHECK(errno == EPERM);
    struct stat st {};
    REQUIRE(::fstat(s.blob_fd(), &st) == 0);
    CHECK(st.st_size == 64 * 1024);
    // Every page can still be touched (a SIGBUS here would end the test program).
    auto bytes = blob->bytes();
    for (size_t i = 0; i < bytes.size(); i += 4096)
        bytes[i] = std::byte{1};
    CHECK(bytes[bytes.size() - 1] == std::byte{0});
}

TEST_CASE("a blob whose fd cannot be sealed against shrinking is refused", "[faults]") {
    SilentServer s(SilentServer::serves_blobs, /*allow_sealing=*/false);
    auto t = apir::VtestTransport::open(options_for(s.path()));
    REQUIRE(t);
    auto blob = t->create_shmem(16 * 1024);
    REQUIRE_FALSE(blob);
    CHECK(blob.error() == Errc::device_error);
    CHECK(blob.error().message().find("sealed") != std::string::npos);
    CHECK(t->stats().live_blobs == 0);
}

TEST_CASE("a server child killed mid-call: every waiter gets DISCONNECTED, a new connection "
          "works",
          "[faults][demo]") {
    VtestServer server(demo_config());
    {
        auto s = connected_session(server);
        constexpr int threads = 4;
        std::vector<apir::Expected<apir::Empty>> results(threads);
        std::vector<double> took(threads);
        std::vector<std::thread> pool;
        const auto start = apir::Clock::now();
        for (int i = 0; i < threads; ++i)
            pool.emplace_back([&, i] {
                apir::CallOptions co;
                co.deadline = apir::Deadline::after(20s);
                results[i] = s->call<demo::Sleep>(demo::SleepRequest{5000}, co);
                took[i] = ms_since(start);
            });
        std::this_thread::sleep_for(300ms);
        auto kids = server.children();
        REQUIRE_FALSE(kids.empty());
        for (pid_t k : kids)
            ::kill(k, SIGKILL);
        for (auto& p : pool)
            p.join();
        for (int i = 0; i < threads; ++i) {
            INFO("thread " << i);
            REQUIRE_FALSE(results[i]);
            CHECK(results[i].error() == Errc::disconnected);
            CHECK(took[i] < 4000); // long before the sleep or the deadline
        }
        auto later = s->call<demo::Echo>(demo::EchoRequest{1, "x"});
        REQUIRE_FALSE(later);
        CHECK(later.error() == Errc::disconnected);
    }
    auto t2 = apir::VtestTransport::open(options_for(server.socket_path()));
    REQUIRE(t2);
    Session s2(std::move(*t2), quiet_session());
    REQUIRE(s2.connect());
    auto e = s2.call<demo::Echo>(demo::EchoRequest{2, "again"});
    REQUIRE(e);
    CHECK(e->text == "again");
}

TEST_CASE("a moved-from transport fails with DISCONNECTED", "[open]") {
    VtestServer server(demo_config());
    auto t = apir::VtestTransport::open(options_for(server.socket_path()));
    REQUIRE(t);
    apir::VtestTransport moved = std::move(*t);
    auto r = t->create_shmem(16);
    REQUIRE_FALSE(r);
    CHECK(r.error() == Errc::disconnected);
    CHECK(t->name() == "moved-from");
    CHECK(moved.ping(apir::Deadline::after(5s)));
}

TEST_CASE("open: a server that bends the opening's answers is refused, each with its reason",
          "[open]") {
    struct Case {
        const char* name;
        SilentServer::Opening opening;
        const char* says;
    };
    const Case cases[] = {
        {"a version above the one asked", {.version = 0xffffffff}, "above the 4 asked"},
        {"a capset answer too short to say whether blobs work",
         {.capset_words = 2},
         "too few to say whether blobs"},
        {"data in the PING answer after CONTEXT_INIT",
         {.context_ping_data = true},
         "after CONTEXT_INIT was answered with data"},
    };
    for (const Case& c : cases) {
        DYNAMIC_SECTION(c.name) {
            SilentServer s(SilentServer::answers_pings, true, {}, c.opening);
            auto t = apir::VtestTransport::open(options_for(s.path()));
            REQUIRE_FALSE(t);
            CHECK(t.error() == Errc::decode_bad_value);
            INFO(t.error().message());
            CHECK(t.error().message().find(c.says) != std::string::npos);
        }
    }
}

TEST_CASE("create_shmem waits for the answers the server owes only until its deadline, and "
          "the connection stays up",
          "[faults]") {
    SilentServer s(SilentServer::opens_then_silent);
    auto t = open_on(s, 600ms);
    // A call whose PING is never answered: the blob's answer would come after it.
    std::vector<std::byte> page_bytes(apir::reply_page_size);
    apir::Shmem page(nullptr, 1, page_bytes);
    auto cmd = raw_command(2, 0, 1);
    REQUIRE(t.submit(cmd, 1, apir::Deadline::after(1s)));
    auto r = t.wait_reply(page, apir::WaitPolicy{}, apir::Deadline::after(50ms));
    REQUIRE_FALSE(r);
    CHECK(r.error() == Errc::timeout);

    // The caller's deadline, sooner than io_timeout, holds.
    times_out([&] { return t.create_shmem(4096, apir::Deadline::after(150ms)); }, 150, 550);
    // Without one, io_timeout.
    times_out([&] { return t.create_shmem(4096); }, 600, 5000);
    // Nothing was cut: the connection is not given up.
    CHECK(t.submit(cmd, 1, apir::Deadline::after(1s)));
}

TEST_CASE("a session's call that needs a new reply page ends at its deadline behind an "
          "answer the server owes",
          "[faults]") {
    SilentServer s(SilentServer::blobs_no_pings);
    auto t = open_on(s, 10s);
    Session session(std::move(t), quiet_session());
    apir::CallOptions co;
    // The first call gets its reply page, and its PING is never answered: TIMEOUT, and
    // its channel is set aside (the host may still answer into it).
    co.deadline = apir::Deadline::after(200ms);
    auto r = session.call<demo::Add>(demo::AddRequest{1, 2}, co);
    REQUIRE_FALSE(r);
    CHECK(r.error() == Errc::timeout);
    // The next needs a new page, whose blob's answer comes after that PING's: it waits
    // for it until its own deadline, not for io_timeout.
    co.deadline = apir::Deadline::after(200ms);
    times_out([&] { return session.call<demo::Add>(demo::AddRequest{1, 2}, co); }, 150, 3000);
}

TEST_CASE("a blob's release never waits for the server: its RESOURCE_UNREF goes with the next "
          "message",
          "[faults]") {
    SilentServer s(SilentServer::blobs_no_pings);
    auto t = open_on(s, 5s);
    auto blob = t.create_shmem(4096);
    REQUIRE(blob);
    const uint32_t id = blob->res_id();

    // Another thread waits for a reply in the PING barrier, which the server never
    // answers: it holds the connection until its deadline.
    std::vector<std::byte> page_bytes(apir::reply_page_size);
    apir::Shmem page(nullptr, 1, page_bytes);
    auto cmd = raw_command(2, 0, 1);
    REQUIRE(t.submit(cmd, 1, apir::Deadline::after(1s)));
    std::thread waiter([&] {
        auto r = t.wait_reply(page, apir::WaitPolicy{}, apir::Deadline::after(1500ms));
        CHECK_FALSE(r);
    });
    std::this_thread::sleep_for(300ms);
    const auto start = apir::Clock::now();
    blob->reset();
    const double took = ms_since(start);
    waiter.join();
    CHECK(took < 200); // it waited for the lock's holder (1.2 s) before
    CHECK(s.unrefs().empty());
    // The next message takes it along.
    REQUIRE(t.submit(cmd, 1, apir::Deadline::after(1s)));
    CHECK(s.unrefs_when(1) == std::vector<uint32_t>{id});
    CHECK(t.stats().blobs_released == 1);
}

TEST_CASE("a blob whose answer comes after its creator's deadline: TIMEOUT, the connection "
          "stays up, and the late blob is released",
          "[faults]") {
    SilentServer s(SilentServer::serves_blobs, true, {}, {.blob_delay_ms = 400});
    auto t = open_on(s, 10s);
    times_out([&] { return t.create_shmem(4096, apir::Deadline::after(100ms)); }, 100,
              390); // not the server's 400 ms, nor io_timeout
    // The next creation reads the late answer first, releases that blob, and gets its own.
    auto next = t.create_shmem(4096, apir::Deadline::after(5s));
    REQUIRE(next);
    CHECK(next->res_id() == 8); // the server's first blob was 7
    REQUIRE(t.submit(raw_command(2, 0, 0), 0, apir::Deadline::after(1s)));
    CHECK(s.unrefs_when(1) == std::vector<uint32_t>{7});
    CHECK(t.stats().blobs_created == 1);
}

int main(int argc, char** argv) {
    if (auto why = VtestServer::unavailable()) {
        std::printf("skip: %s\n", why->c_str());
        return 77;
    }
    return Catch::Session().run(argc, argv);
}
