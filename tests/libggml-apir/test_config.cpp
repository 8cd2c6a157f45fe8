// The environment variables of libggml-apir, parsed (no ggml or peer needed).
#include "catch.hpp"

#include "config.hpp"

#include <map>
#include <string>

using namespace apir;
using namespace apir::ggml_remote;

namespace {
struct Env {
    std::map<std::string, std::string> vars;
    EnvLookup lookup() const {
        return [this](const char* name) -> const char* {
            auto it = vars.find(name);
            return it == vars.end() ? nullptr : it->second.c_str();
        };
    }
};
} // namespace

TEST_CASE("APIR_GGML_CONFIG is key=value pairs separated by ';'") {
    auto m = parse_config_string("ggml.library.path=/a b/libggml-cpu.so;;ggml.library.reg=x=y;");
    REQUIRE(m);
    CHECK(m->size() == 2);
    CHECK(m->at("ggml.library.path") == "/a b/libggml-cpu.so"); // verbatim, spaces kept
    CHECK(m->at("ggml.library.reg") == "x=y");                  // the first '=' splits
    CHECK(parse_config_string("")->empty());

    auto no_eq = parse_config_string("a=1;oops");
    REQUIRE_FALSE(no_eq);
    CHECK(no_eq.error() == Errc::invalid_argument);
    CHECK(no_eq.error().message().find("'oops'") != std::string::npos);
    CHECK_FALSE(parse_config_string("=value"));
}

TEST_CASE("without variables: the virtio-gpu transport, 30 s calls, compute without deadline") {
    Env e;
    auto c = config_from_environment(e.lookup());
    REQUIRE(c);
    CHECK(c->transport == TransportKind::virtgpu);
    CHECK(c->node.empty());
    CHECK(c->call_timeout == std::chrono::milliseconds(30000));
    CHECK_FALSE(c->compute_timeout);
    CHECK(c->log_level == LogLevel::warn);
}

TEST_CASE("vtest takes its socket from APIR_GGML_VTEST_SOCKET and needs no library") {
    Env e;
    e.vars["APIR_GGML_TRANSPORT"] = "vtest";
    auto d = config_from_environment(e.lookup());
    REQUIRE(d);
    CHECK(d->transport == TransportKind::vtest);
    CHECK(d->vtest_socket.empty()); // the transport's default
    e.vars["APIR_GGML_VTEST_SOCKET"] = "/run/x/vtest.sock";
    auto c = config_from_environment(e.lookup());
    REQUIRE(c);
    CHECK(c->vtest_socket == "/run/x/vtest.sock");
}

TEST_CASE("loopback needs a backend library, which becomes apir.load_library.path") {
    Env e;
    e.vars["APIR_GGML_TRANSPORT"] = "loopback";
    auto missing = config_from_environment(e.lookup());
    REQUIRE_FALSE(missing);
    CHECK(missing.error().message().find("APIR_GGML_BACKEND_LIBRARY") != std::string::npos);

    e.vars["APIR_GGML_BACKEND_LIBRARY"] = "/lib/libggml-virtgpu-backend.so";
    e.vars["APIR_GGML_CONFIG"] =
        "ggml.library.path=/lib/libggml-cpu.so;ggml.library.reg=ggml_backend_cpu_reg;"
        "apir.load_library.path=/elsewhere.so";
    e.vars["APIR_GGML_LOOPBACK_MODE"] = "inline";
    auto c = config_from_environment(e.lookup());
    REQUIRE(c);
    CHECK(c->transport == TransportKind::loopback);
    CHECK_FALSE(c->loopback_threaded);
    CHECK(c->host_config.at("apir.load_library.path") == "/lib/libggml-virtgpu-backend.so");
    CHECK(c->host_config.at("ggml.library.reg") == "ggml_backend_cpu_reg");

    SECTION("or the library comes from APIR_GGML_CONFIG alone") {
        e.vars.erase("APIR_GGML_BACKEND_LIBRARY");
        auto d = config_from_environment(e.lookup());
        REQUIRE(d);
        CHECK(d->backend_library == "/elsewhere.so");
    }
}

TEST_CASE("timeouts, node and log level; a bad value names its variable") {
    Env e;
    e.vars["APIR_GGML_NODE"] = "/dev/dri/renderD129";
    e.vars["APIR_GGML_TIMEOUT_MS"] = "1500";
    e.vars["APIR_GGML_COMPUTE_TIMEOUT_MS"] = "600000";
    e.vars["APIR_GGML_LOG"] = "debug";
    auto c = config_from_environment(e.lookup());
    REQUIRE(c);
    CHECK(c->node == "/dev/dri/renderD129");
    CHECK(c->call_timeout == std::chrono::milliseconds(1500));
    CHECK(c->compute_timeout == std::chrono::milliseconds(600000));
    CHECK(c->log_level == LogLevel::debug);
    CHECK(c->zero_copy);                                         // auto by default
    CHECK(c->memory_max_age == std::chrono::milliseconds(1000)); // the default
    e.vars["APIR_GGML_MEMORY_MAX_AGE_MS"] = "0";
    CHECK(config_from_environment(e.lookup())->memory_max_age.count() == 0);
    e.vars["APIR_GGML_MEMORY_MAX_AGE_MS"] = "250";
    CHECK(config_from_environment(e.lookup())->memory_max_age == std::chrono::milliseconds(250));
    e.vars["APIR_GGML_ZERO_COPY"] = "off";
    CHECK_FALSE(config_from_environment(e.lookup())->zero_copy);
    e.vars["APIR_GGML_ZERO_COPY"] = "auto";
    CHECK(config_from_environment(e.lookup())->zero_copy);

    for (auto [var, bad] :
         {std::pair{"APIR_GGML_TIMEOUT_MS", "0"}, std::pair{"APIR_GGML_TIMEOUT_MS", "12ms"},
          std::pair{"APIR_GGML_COMPUTE_TIMEOUT_MS", "-1"}, std::pair{"APIR_GGML_LOG", "loud"},
          std::pair{"APIR_GGML_TRANSPORT", "tcp"}, std::pair{"APIR_GGML_LOOPBACK_MODE", "forked"},
          std::pair{"APIR_GGML_ZERO_COPY", "on"}, std::pair{"APIR_GGML_MEMORY_MAX_AGE_MS", "-1"},
          std::pair{"APIR_GGML_MEMORY_MAX_AGE_MS", "1s"}}) {
        Env b = e;
        b.vars[var] = bad;
        auto r = config_from_environment(b.lookup());
        REQUIRE_FALSE(r);
        CHECK(r.error() == Errc::invalid_argument);
        CHECK(r.error().message().find(var) != std::string::npos);
    }
}
