// Built when the DRM transport is not: the session suite runs over loopback only.
#include "test_transports.hpp"

std::vector<apir_test::TestTransport> apir_test::extra_test_transports() {
    return {};
}
