// A virgl_test_server for one test: $APIR_VIRGL_PEER_DIR/bin/virgl_test_server started
// with --no-virgl on a socket in a private temporary folder, in a process group of its
// own, with the APIR host's configuration in its environment. Destroying it kills the
// group and reaps every process of it (the forked per-client children included: this
// process becomes their subreaper), then removes the folder. The server's output goes to
// a log file that log() returns and that is printed to stderr at the end when it holds
// anything (meson shows it for a failing test).
//
//     if (auto why = apir_test::VtestServer::unavailable()) { puts(why->c_str()); exit(77); }
//     apir_test::VtestServer server({{"apir.load_library.path", demo_backend}});
//     auto t = apir::VtestTransport::open({.socket_path = server.socket_path()});
#pragma once

#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <fcntl.h>
#include <spawn.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

extern char** environ;

namespace apir_test {

class VtestServer {
public:
    /// The host configuration keys the server takes from its environment.
    static const std::map<std::string, std::string>& config_env() {
        static const std::map<std::string, std::string> m{
            {"apir.load_library.path", "VIRGL_APIR_BACKEND_LIBRARY"},
            {"ggml.library.path", "APIR_LLAMA_CPP_GGML_LIBRARY_PATH"},
            {"ggml.library.reg", "APIR_LLAMA_CPP_GGML_LIBRARY_REG"},
            {"ggml.library.init", "APIR_LLAMA_CPP_GGML_LIBRARY_INIT"},
            {"gpu.shmem_window", "APIR_GPU_SHMEM_WINDOW_BYTES"},
        };
        return m;
    }

    /// The server binary, or why there is none (a reason to skip).
    static std::optional<std::string> unavailable() {
        const char* dir = std::getenv("APIR_VIRGL_PEER_DIR");
        if (!dir || !*dir)
            return std::string("APIR_VIRGL_PEER_DIR is not set (a virglrenderer build with "
                               "bin/virgl_test_server and the APIR host)");
        if (::access(binary().c_str(), X_OK) != 0)
            return binary() + " is missing or not executable";
        return std::nullopt;
    }
    static std::string binary() {
        const char* dir = std::getenv("APIR_VIRGL_PEER_DIR");
        return std::string(dir ? dir : "") + "/bin/virgl_test_server";
    }

    /// Starts the server with these host configuration keys (others are ignored: the
    /// server cannot take them) and waits until its socket accepts connections.
    explicit VtestServer(const std::map<std::string, std::string, std::less<>>& config = {},
                         std::vector<std::string> extra_args = {}) {
        (void)::prctl(PR_SET_CHILD_SUBREAPER, 1); // the forked children are reaped here
        char tmpl[] = "/tmp/apir-vtest-XXXXXX";
        if (!::mkdtemp(tmpl)) die("mkdtemp");
        dir_ = tmpl;
        socket_ = dir_ + "/vtest.sock";
        log_ = dir_ + "/server.log";

        std::vector<std::string> env;
        for (char** e = environ; *e; ++e) {
            const std::string s = *e;
            bool ours = s.rfind("GGML_NO_BACKTRACE=", 0) == 0;
            for (const auto& [key, var] : config_env())
                if (s.rfind(var + "=", 0) == 0) ours = true;
            if (!ours) env.push_back(s);
        }
        for (const auto& [key, value] : config)
            if (auto it = config_env().find(key); it != config_env().end())
                env.push_back(it->second + "=" + value);
        env.push_back("GGML_NO_BACKTRACE=1");

        std::vector<std::string> args{binary(), "--no-virgl", "--socket-path", socket_};
        args.insert(args.end(), extra_args.begin(), extra_args.end());

        posix_spawn_file_actions_t fa;
        posix_spawn_file_actions_init(&fa);
        posix_spawn_file_actions_addopen(&fa, 1, log_.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
        posix_spawn_file_actions_adddup2(&fa, 1, 2);
        posix_spawnattr_t at;
        posix_spawnattr_init(&at);
        posix_spawnattr_setflags(&at, POSIX_SPAWN_SETPGROUP);
        posix_spawnattr_setpgroup(&at, 0); // a group of its own, led by the server
        auto argv = c_strings(args);
        auto envp = c_strings(env);
        const int r = ::posix_spawn(&pid_, argv[0], &fa, &at, argv.data(), envp.data());
        posix_spawn_file_actions_destroy(&fa);
        posix_spawnattr_destroy(&at);
        if (r != 0) {
            errno = r;
            die("posix_spawn " + binary());
        }
        // The socket appears about 30 ms after the start.
        const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
        while (!accepts()) {
            int status = 0;
            if (::waitpid(pid_, &status, WNOHANG) == pid_) {
                pid_ = -1;
                std::fprintf(stderr, "virgl_test_server exited at once:\n%s\n", log().c_str());
                std::exit(1);
            }
            if (std::chrono::steady_clock::now() > until) {
                std::fprintf(stderr, "virgl_test_server did not listen within 10 s:\n%s\n",
                             log().c_str());
                std::exit(1);
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(2));
        }
    }
    VtestServer(const VtestServer&) = delete;
    VtestServer& operator=(const VtestServer&) = delete;
    ~VtestServer() {
        stop();
        const std::string l = log();
        if (!l.empty() && std::getenv("APIR_VTEST_QUIET") == nullptr)
            std::fprintf(stderr, "--- virgl_test_server log (%s)\n%s--- end of log\n",
                         socket_.c_str(), tail(l).c_str());
        std::error_code ec;
        std::filesystem::remove_all(dir_, ec);
    }

    [[nodiscard]] const std::string& socket_path() const noexcept { return socket_; }
    [[nodiscard]] pid_t pid() const noexcept { return pid_; }
    [[nodiscard]] std::string log() const {
        std::ifstream f(log_);
        std::stringstream ss;
        ss << f.rdbuf();
        return ss.str();
    }

    /// The server's forked children (one per client connection).
    [[nodiscard]] std::vector<pid_t> children() const {
        std::vector<pid_t> out;
        std::ifstream f("/proc/" + std::to_string(pid_) + "/task/" + std::to_string(pid_) +
                        "/children");
        pid_t c;
        while (f >> c)
            out.push_back(c);
        return out;
    }

    /// Kills the group and reaps all of it (server and children).
    void stop() {
        if (pid_ <= 0) return;
        (void)::killpg(pid_, SIGKILL);
        const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
        for (;;) {
            const pid_t r = ::waitpid(-pid_, nullptr, WNOHANG);
            if (r < 0 && errno == ECHILD) break; // nothing of the group is left
            if (r == 0) {
                if (std::chrono::steady_clock::now() > until) break;
                std::this_thread::sleep_for(std::chrono::milliseconds(1));
            }
        }
        pid_ = -1;
    }

private:
    static std::vector<char*> c_strings(std::vector<std::string>& v) {
        std::vector<char*> out;
        for (auto& s : v)
            out.push_back(s.data());
        out.push_back(nullptr);
        return out;
    }
    static std::string tail(const std::string& s) {
        constexpr size_t max = 4096;
        return s.size() <= max ? s : "...\n" + s.substr(s.size() - max);
    }
    [[noreturn]] static void die(const std::string& what) {
        std::fprintf(stderr, "VtestServer: %s: %s\n", what.c_str(), std::strerror(errno));
        std::exit(1);
    }
    // A probe connection is accepted and closed: the server's child for it exits.
    [[nodiscard]] bool accepts() const {
        const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0) return false;
        sockaddr_un a{};
        a.sun_family = AF_UNIX;
        std::strncpy(a.sun_path, socket_.c_str(), sizeof a.sun_path - 1);
        const bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
        ::close(fd);
        return ok;
    }

    std::string dir_, socket_, log_;
    pid_t pid_ = -1;
};

} // namespace apir_test
