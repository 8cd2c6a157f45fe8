// The APIR 0.2 constants and return-code tables (apir/protocol.hpp), checked against
// the protocol's numbers.
#include "wire_test.hpp"

#include <apir/protocol.hpp>

#include <cstdint>
#include <set>
#include <string_view>

TEST_CASE("protocol version is 0.2 and the handshake magic is 0xab1e", "[protocol]") {
    STATIC_REQUIRE(apir::protocol_major == 0);
    STATIC_REQUIRE(apir::protocol_minor == 2);
    STATIC_REQUIRE(apir::handshake_magic == 0xab1e);
}

TEST_CASE("command types are HANDSHAKE 0, LOADLIBRARY 1, FORWARD 2", "[protocol]") {
    STATIC_REQUIRE(static_cast<int32_t>(apir::CommandType::handshake) == 0);
    STATIC_REQUIRE(static_cast<int32_t>(apir::CommandType::load_library) == 1);
    STATIC_REQUIRE(static_cast<int32_t>(apir::CommandType::forward) == 2);
    STATIC_REQUIRE(apir::command_type_count == 3);

    CHECK(apir::command_type_name(0) == "HANDSHAKE");
    CHECK(apir::command_type_name(1) == "LOADLIBRARY");
    CHECK(apir::command_type_name(2) == "FORWARD");
    CHECK(apir::command_type_name(3) == "UNKNOWN_COMMAND");
    CHECK(apir::command_type_name(-1) == "UNKNOWN_COMMAND");
    CHECK(apir::command_type_name(331) == "UNKNOWN_COMMAND"); // the Venus offset is not removed
}

TEST_CASE("capsets: APIR is 10, Venus is 4 with command types offset by 331", "[protocol]") {
    STATIC_REQUIRE(apir::capset_apir == 10);
    STATIC_REQUIRE(apir::capset_venus == 4);
    STATIC_REQUIRE(apir::venus_command_offset == 331);
}

TEST_CASE("timeouts, shared-memory sizes and header sizes", "[protocol]") {
    STATIC_REQUIRE(apir::default_handshake_timeout_ms == 2000);
    STATIC_REQUIRE(apir::default_load_library_timeout_ms == 60000);
    STATIC_REQUIRE(apir::data_shmem_size == 0x1830000);
    STATIC_REQUIRE(apir::reply_page_size == 0x4000);
    STATIC_REQUIRE(apir::shmem_alignment == 0x4000);
    STATIC_REQUIRE(apir::command_header_size == 12);
    STATIC_REQUIRE(apir::reply_header_size == 4);
}

TEST_CASE("configuration keys", "[protocol]") {
    CHECK(apir::config_library_path == "apir.load_library.path");
    CHECK(apir::config_ggml_library_path == "ggml.library.path");
    CHECK(apir::config_ggml_library_reg == "ggml.library.reg");
}

TEST_CASE("LOADLIBRARY codes: 0..5, then base index 6", "[protocol]") {
    using C = apir::LoadLibraryCode;
    STATIC_REQUIRE(static_cast<uint32_t>(C::success) == 0);
    STATIC_REQUIRE(static_cast<uint32_t>(C::hypercall_init_error) == 1);
    STATIC_REQUIRE(static_cast<uint32_t>(C::already_loaded) == 2);
    STATIC_REQUIRE(static_cast<uint32_t>(C::config_missing) == 3);
    STATIC_REQUIRE(static_cast<uint32_t>(C::cannot_open) == 4);
    STATIC_REQUIRE(static_cast<uint32_t>(C::symbol_missing) == 5);
    STATIC_REQUIRE(static_cast<uint32_t>(C::base_index) == 6);
}

TEST_CASE("FORWARD codes: 0..3, then base index 4; invalid forward index is 6", "[protocol]") {
    using C = apir::ForwardCode;
    STATIC_REQUIRE(static_cast<uint32_t>(C::success) == 0);
    STATIC_REQUIRE(static_cast<uint32_t>(C::no_dispatch) == 1);
    STATIC_REQUIRE(static_cast<uint32_t>(C::timeout) == 2);
    STATIC_REQUIRE(static_cast<uint32_t>(C::sync_streams_failed) == 3);
    STATIC_REQUIRE(static_cast<uint32_t>(C::base_index) == 4);
    STATIC_REQUIRE(apir::forward_invalid_index == 6);
}

TEST_CASE("backend initialization codes 0..9", "[protocol]") {
    using C = apir::BackendInitCode;
    STATIC_REQUIRE(static_cast<uint32_t>(C::success) == 0);
    STATIC_REQUIRE(static_cast<uint32_t>(C::cannot_open_backend_library) == 1);
    STATIC_REQUIRE(static_cast<uint32_t>(C::cannot_open_ggml_library) == 2);
    STATIC_REQUIRE(static_cast<uint32_t>(C::missing_backend_symbols) == 3);
    STATIC_REQUIRE(static_cast<uint32_t>(C::missing_ggml_symbols) == 4);
    STATIC_REQUIRE(static_cast<uint32_t>(C::backend_failed) == 5);
    STATIC_REQUIRE(static_cast<uint32_t>(C::backend_registration_failed) == 6);
    STATIC_REQUIRE(static_cast<uint32_t>(C::already_initialized) == 7);
    STATIC_REQUIRE(static_cast<uint32_t>(C::no_device) == 8);
    STATIC_REQUIRE(static_cast<uint32_t>(C::backend_init_failed) == 9);
    STATIC_REQUIRE(apir::backend_init_code_count == 10);
}

namespace {
/// Every code of a table has a non-empty name and message, and the names differ.
template <class Info>
void check_table(Info info, uint32_t count, std::string_view unknown_name) {
    std::set<std::string_view> names;
    for (uint32_t code = 0; code < count; ++code) {
        apir::CodeInfo i = info(code);
        INFO("code " << code << ": " << i.name);
        CHECK_FALSE(i.name.empty());
        CHECK_FALSE(i.message.empty());
        CHECK(i.name != unknown_name);
        CHECK(names.insert(i.name).second);
    }
    CHECK(info(count).name == unknown_name);
    CHECK(info(0xffffffff).name == unknown_name);
}
} // namespace

TEST_CASE("every code of every table has a name and a message", "[protocol]") {
    SECTION("LOADLIBRARY, first level") {
        check_table(apir::load_library_code_info, 6, "LOAD_UNKNOWN");
        CHECK(apir::load_library_code_info(3).name == "LOAD_CONFIG_MISSING");
    }
    SECTION("backend initialization") {
        check_table(apir::backend_init_code_info, apir::backend_init_code_count, "BACKEND_UNKNOWN");
        CHECK(apir::backend_init_code_info(8).name == "BACKEND_NO_DEVICE");
    }
    SECTION("FORWARD: codes past the host's own are the backend's") {
        check_table(apir::forward_code_info, 4, "FORWARD_BACKEND_ERROR");
        CHECK(apir::forward_code_info(1).name == "FORWARD_NO_DISPATCH");
    }
}
