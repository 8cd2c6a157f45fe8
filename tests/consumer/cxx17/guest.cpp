// Compiled with -std=c++17 by the test suite: must stop at apir's C++20 check.
#include <apir/apir.hpp>

int main() {
    return 0;
}
