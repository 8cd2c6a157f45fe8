#include "test_transports.hpp"

#include <apir/loopback.hpp>

namespace apir_test {

namespace {
apir::AnyTransport make_loopback(TransportSetup s, apir::LoopbackOptions::Mode mode) {
    apir::LoopbackOptions o;
    o.mode = mode;
    o.host = std::move(s.host);
    o.deliver = std::move(s.deliver);
    return apir::AnyTransport(apir::LoopbackTransport(std::move(o)));
}
} // namespace

const std::vector<TestTransport>& test_transports() {
    static const std::vector<TestTransport> all = [] {
        std::vector<TestTransport> v{
            {"loopback-inline",
             [](TransportSetup s) {
                 return make_loopback(std::move(s), apir::LoopbackOptions::Mode::inline_host);
             }},
            {"loopback-threaded",
             [](TransportSetup s) {
                 return make_loopback(std::move(s), apir::LoopbackOptions::Mode::threaded);
             }},
        };
        for (auto& t : extra_test_transports())
            v.push_back(std::move(t));
        return v;
    }();
    return all;
}

std::string backend_path(const std::string& name) {
    if (name == "demo") return APIR_TEST_BACKEND_DEMO;
    if (name == "failing") return APIR_TEST_BACKEND_FAILING;
    if (name == "missing-symbol") return APIR_TEST_BACKEND_MISSING_SYMBOL;
    if (name == "not-a-library") return APIR_TEST_BACKEND_NOT_A_LIBRARY;
    return "/nonexistent/" + name;
}

} // namespace apir_test
