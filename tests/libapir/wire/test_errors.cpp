// The error model (apir/error.hpp): every code has a stable name, a category a
// caller can act on and a message; LOADLIBRARY and FORWARD return codes decode into
// distinct, named errors; Expected<T> carries a value or an Error.
#include "wire_test.hpp"

#include <apir/error.hpp>

#include <fmt/format.h>

#include <cstddef>
#include <cstdint>
#include <iterator>
#include <set>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

using apir::Category;
using apir::Errc;

namespace {

bool contains(std::string_view haystack, std::string_view needle) {
    return haystack.find(needle) != std::string_view::npos;
}

struct Row {
    Errc code;
    std::string_view name;
    Category category;
};

/// The whole table, in enum order: the names are part of the API.
const std::vector<Row> every_error = {
    {Errc::encode_overflow, "ENCODE_OVERFLOW", Category::exhausted},
    {Errc::decode_overrun, "DECODE_OVERRUN", Category::protocol},
    {Errc::decode_size_too_large, "DECODE_SIZE_TOO_LARGE", Category::protocol},
    {Errc::decode_missing_nul, "DECODE_MISSING_NUL", Category::protocol},
    {Errc::decode_bad_value, "DECODE_BAD_VALUE", Category::protocol},
    {Errc::invalid_argument, "INVALID_ARGUMENT", Category::invalid_argument},
    {Errc::timeout, "TIMEOUT", Category::timeout},
    {Errc::disconnected, "DISCONNECTED", Category::device},
    {Errc::unknown_resource, "UNKNOWN_RESOURCE", Category::protocol},
    {Errc::reply_too_large, "REPLY_TOO_LARGE", Category::protocol},
    {Errc::handshake_failed, "HANDSHAKE_FAILED", Category::protocol},
    {Errc::version_mismatch, "VERSION_MISMATCH", Category::version},
    {Errc::unknown_command, "UNKNOWN_COMMAND", Category::protocol},
    {Errc::no_device, "NO_DEVICE", Category::device},
    {Errc::device_error, "DEVICE_ERROR", Category::device},
    {Errc::out_of_memory, "OUT_OF_MEMORY", Category::exhausted},
    {Errc::unsupported, "UNSUPPORTED", Category::unsupported},
    {Errc::library_error, "LIBRARY_ERROR", Category::backend},
    {Errc::load_hypercall_init_error, "LOAD_HYPERCALL_INIT_ERROR", Category::backend},
    {Errc::load_already_loaded, "LOAD_ALREADY_LOADED", Category::backend},
    {Errc::load_config_missing, "LOAD_CONFIG_MISSING", Category::backend},
    {Errc::load_cannot_open, "LOAD_CANNOT_OPEN", Category::backend},
    {Errc::load_symbol_missing, "LOAD_SYMBOL_MISSING", Category::backend},
    {Errc::library_hypercall_init_error, "LIBRARY_HYPERCALL_INIT_ERROR", Category::backend},
    {Errc::library_already_loaded, "LIBRARY_ALREADY_LOADED", Category::backend},
    {Errc::library_config_missing, "LIBRARY_CONFIG_MISSING", Category::backend},
    {Errc::library_cannot_open, "LIBRARY_CANNOT_OPEN", Category::backend},
    {Errc::library_symbol_missing, "LIBRARY_SYMBOL_MISSING", Category::backend},
    {Errc::backend_cannot_open_backend_library, "BACKEND_CANNOT_OPEN_BACKEND_LIBRARY",
     Category::backend},
    {Errc::backend_cannot_open_ggml_library, "BACKEND_CANNOT_OPEN_GGML_LIBRARY", Category::backend},
    {Errc::backend_missing_backend_symbols, "BACKEND_MISSING_BACKEND_SYMBOLS", Category::backend},
    {Errc::backend_missing_ggml_symbols, "BACKEND_MISSING_GGML_SYMBOLS", Category::backend},
    {Errc::backend_failed, "BACKEND_FAILED", Category::backend},
    {Errc::backend_registration_failed, "BACKEND_REGISTRATION_FAILED", Category::backend},
    {Errc::backend_already_initialized, "BACKEND_ALREADY_INITIALIZED", Category::backend},
    {Errc::backend_no_device, "BACKEND_NO_DEVICE", Category::backend},
    {Errc::backend_init_failed, "BACKEND_INIT_FAILED", Category::backend},
    {Errc::backend_init_unknown, "BACKEND_UNKNOWN", Category::backend},
    {Errc::forward_no_dispatch, "FORWARD_NO_DISPATCH", Category::backend},
    {Errc::forward_timeout, "FORWARD_TIMEOUT", Category::timeout},
    {Errc::forward_sync_streams_failed, "FORWARD_SYNC_STREAMS_FAILED", Category::backend},
    {Errc::forward_invalid_index, "FORWARD_INVALID_INDEX", Category::invalid_argument},
    {Errc::forward_backend_error, "FORWARD_BACKEND_ERROR", Category::backend},
    {Errc::host_behind, "HOST_BEHIND", Category::timeout},
    {Errc::staging_exhausted, "STAGING_EXHAUSTED", Category::exhausted},
    {Errc::ggml_unknown_handle, "GGML_UNKNOWN_HANDLE", Category::invalid_argument},
    {Errc::ggml_status_alloc_failed, "GGML_STATUS_ALLOC_FAILED", Category::exhausted},
    {Errc::ggml_status_failed, "GGML_STATUS_FAILED", Category::backend},
    {Errc::ggml_status_aborted, "GGML_STATUS_ABORTED", Category::backend},
};

constexpr auto error_count = static_cast<unsigned>(Errc::count_);

} // namespace

// ---------------------------------------------------------------------------
// Names, categories, messages

TEST_CASE("every error code has a non-empty, unique, upper-case name and a message", "[errors]") {
    std::set<std::string_view> names;
    for (unsigned i = 0; i < error_count; ++i) {
        auto info = apir::error_info(static_cast<Errc>(i));
        INFO("Errc #" << i << " " << info.name);
        CHECK_FALSE(info.name.empty());
        CHECK(info.name != "UNKNOWN_ERROR");
        CHECK(info.name.find_first_not_of("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_") ==
              std::string_view::npos);
        CHECK_FALSE(info.message.empty());
        CHECK(apir::category_name(info.category) != "unknown");
        CHECK(names.insert(info.name).second);
    }
    CHECK(names.size() == error_count);
}

TEST_CASE("each error code has the documented name and category", "[errors]") {
    REQUIRE(every_error.size() == error_count);
    for (unsigned i = 0; i < error_count; ++i) {
        const Row& row = every_error[i];
        INFO("row " << i << ": " << row.name);
        CHECK(static_cast<unsigned>(row.code) == i);
        apir::Error e(row.code);
        CHECK(e.name() == row.name);
        CHECK(e.category() == row.category);
        CHECK(e.summary() == apir::error_info(row.code).message);
    }
}

TEST_CASE("a code outside the table still has a name", "[errors]") {
    CHECK(apir::error_info(Errc::count_).name == "UNKNOWN_ERROR");
    CHECK(apir::error_info(static_cast<Errc>(0xffff)).name == "UNKNOWN_ERROR");
}

TEST_CASE("with_context and with_note add to the detail and keep the codes", "[errors]") {
    apir::Error e = apir::Error(apir::Errc::timeout, "no reply").with_wire_code(7).with_errno(110);
    apir::Error c = e.with_context("buffer_get_base");
    CHECK(c.detail() == "buffer_get_base: no reply");
    CHECK(c.code() == apir::Errc::timeout);
    CHECK((c.has_wire_code() && c.wire_code() == 7 && c.sys_errno() == 110));
    apir::Error n = e.with_note("the host is busy");
    CHECK(n.detail() == "no reply; the host is busy");
    CHECK((n.wire_code() == 7 && n.sys_errno() == 110));
    CHECK(apir::Error(apir::Errc::timeout).with_context("get").detail() == "get");
    CHECK(apir::Error(apir::Errc::timeout).with_note("busy").detail() == "busy");
    CHECK(e.detail() == "no reply"); // the original is unchanged
}

TEST_CASE("every category has a distinct name", "[errors]") {
    const std::vector<std::pair<Category, std::string_view>> categories = {
        {Category::protocol, "protocol"},   {Category::timeout, "timeout"},
        {Category::device, "device"},       {Category::backend, "backend"},
        {Category::version, "version"},     {Category::invalid_argument, "invalid_argument"},
        {Category::exhausted, "exhausted"}, {Category::unsupported, "unsupported"},
    };
    for (auto [c, name] : categories)
        CHECK(apir::category_name(c) == name);
    CHECK(apir::category_name(static_cast<Category>(200)) == "unknown");
}

TEST_CASE("Error::message() reads 'NAME: summary', then the wire code, errno and detail",
          "[errors]") {
    auto e = apir::Error(Errc::load_config_missing, "context 3").with_wire_code(3).with_errno(2);
    const std::string m = e.message();
    CHECK(m.rfind("LOAD_CONFIG_MISSING: ", 0) == 0);
    CHECK(contains(m, "apir.load_library.path")); // the summary names the fix
    CHECK(contains(m, "[code 3]"));
    CHECK(contains(m, "[errno 2]"));
    CHECK(contains(m, "(context 3)"));

    SECTION("parts that are absent are left out") {
        apir::Error plain(Errc::timeout);
        CHECK(plain.message() == "TIMEOUT: no reply before the deadline");
        CHECK_FALSE(plain.has_wire_code());
        CHECK(plain.sys_errno() == 0);
        CHECK(plain.detail().empty());
    }
    SECTION("wire code 0 is still shown once set") {
        auto zero = apir::Error(Errc::handshake_failed).with_wire_code(0);
        CHECK(zero.has_wire_code());
        CHECK(contains(zero.message(), "[code 0]"));
    }
}

TEST_CASE("an Error compares equal to its code", "[errors]") {
    apir::Error e(Errc::disconnected);
    CHECK(e == Errc::disconnected);
    CHECK_FALSE(e == Errc::timeout);
}

TEST_CASE("fmt formats an apir::Error as its message", "[errors]") {
    auto e = apir::Error(Errc::forward_backend_error, "backend returned 5").with_wire_code(9);
    CHECK(fmt::format("{}", e) == e.message());
    CHECK(fmt::format("call failed: {}", e) == "call failed: " + e.message());
    // Format specs of strings apply.
    std::string padded = fmt::format("{:>80}", apir::Error(Errc::timeout));
    CHECK(padded.size() == 80);
    CHECK(contains(padded, "TIMEOUT"));
}

// ---------------------------------------------------------------------------
// LOADLIBRARY return codes, three levels

namespace {
struct WireRow {
    uint32_t wire;
    Errc code;
    std::string_view name;
};
} // namespace

TEST_CASE("LOADLIBRARY codes 1..5 are the host's own answer (LOAD_*)", "[errors][loadlibrary]") {
    const std::vector<WireRow> rows = {
        {1, Errc::load_hypercall_init_error, "LOAD_HYPERCALL_INIT_ERROR"},
        {2, Errc::load_already_loaded, "LOAD_ALREADY_LOADED"},
        {3, Errc::load_config_missing, "LOAD_CONFIG_MISSING"},
        {4, Errc::load_cannot_open, "LOAD_CANNOT_OPEN"},
        {5, Errc::load_symbol_missing, "LOAD_SYMBOL_MISSING"},
    };
    for (const auto& row : rows) {
        INFO("code " << row.wire);
        apir::Error e = apir::load_library_error(row.wire);
        CHECK(e.code() == row.code);
        CHECK(e.name() == row.name);
        CHECK(e.name() == apir::load_library_code_info(row.wire).name);
        CHECK(e.category() == Category::backend);
        CHECK(e.has_wire_code());
        CHECK(e.wire_code() == row.wire);
    }
}

TEST_CASE("LOADLIBRARY codes 7..11 are what apir_backend_initialize returned (LIBRARY_*)",
          "[errors][loadlibrary]") {
    const std::vector<WireRow> rows = {
        {7, Errc::library_hypercall_init_error, "LIBRARY_HYPERCALL_INIT_ERROR"},
        {8, Errc::library_already_loaded, "LIBRARY_ALREADY_LOADED"},
        {9, Errc::library_config_missing, "LIBRARY_CONFIG_MISSING"},
        {10, Errc::library_cannot_open, "LIBRARY_CANNOT_OPEN"},
        {11, Errc::library_symbol_missing, "LIBRARY_SYMBOL_MISSING"},
    };
    for (const auto& row : rows) {
        INFO("code " << row.wire);
        apir::Error e = apir::load_library_error(row.wire);
        CHECK(e.code() == row.code);
        CHECK(e.name() == row.name);
        CHECK(e.category() == Category::backend);
        CHECK(e.wire_code() == row.wire);
        CHECK(contains(e.detail(), fmt::format("returned {}", row.wire - 6)));
    }
    // The second level points at the wrapped library's configuration.
    CHECK(contains(apir::load_library_error(9).message(), "ggml.library.path"));
    CHECK(contains(apir::load_library_error(11).message(), "ggml.library.reg"));
}

TEST_CASE("LOADLIBRARY codes 12+c carry the backend's initialization code c (BACKEND_*)",
          "[errors][loadlibrary]") {
    const std::vector<WireRow> rows = {
        {12 + 1, Errc::backend_cannot_open_backend_library, "BACKEND_CANNOT_OPEN_BACKEND_LIBRARY"},
        {12 + 2, Errc::backend_cannot_open_ggml_library, "BACKEND_CANNOT_OPEN_GGML_LIBRARY"},
        {12 + 3, Errc::backend_missing_backend_symbols, "BACKEND_MISSING_BACKEND_SYMBOLS"},
        {12 + 4, Errc::backend_missing_ggml_symbols, "BACKEND_MISSING_GGML_SYMBOLS"},
        {12 + 5, Errc::backend_failed, "BACKEND_FAILED"},
        {12 + 6, Errc::backend_registration_failed, "BACKEND_REGISTRATION_FAILED"},
        {12 + 7, Errc::backend_already_initialized, "BACKEND_ALREADY_INITIALIZED"},
        {12 + 8, Errc::backend_no_device, "BACKEND_NO_DEVICE"},
        {12 + 9, Errc::backend_init_failed, "BACKEND_INIT_FAILED"},
    };
    for (const auto& row : rows) {
        uint32_t c = row.wire - 12;
        INFO("code 12 + " << c);
        apir::Error e = apir::load_library_error(row.wire);
        CHECK(e.code() == row.code);
        CHECK(e.name() == row.name);
        CHECK(e.name() == apir::backend_init_code_info(c).name);
        CHECK(e.category() == Category::backend);
        CHECK(e.wire_code() == row.wire);
        CHECK(contains(e.detail(), fmt::format("code {}", c)));
    }
}

TEST_CASE("an unknown backend initialization code decodes to BACKEND_UNKNOWN",
          "[errors][loadlibrary]") {
    auto wire = GENERATE(as<uint32_t>{}, 12 + 10, 12 + 100, 0xffffffff);
    apir::Error e = apir::load_library_error(wire);
    CHECK(e.code() == Errc::backend_init_unknown);
    CHECK(e.name() == "BACKEND_UNKNOWN");
    CHECK(e.wire_code() == wire);
}

TEST_CASE("LOADLIBRARY codes that no host sends as a failure still yield a named error",
          "[errors][loadlibrary]") {
    // 0 and 6 both mean success to the reference host, and 12 (the backend's own
    // success, sent back as a failure) cannot come from it either.
    CHECK(apir::load_library_error(0).code() == Errc::library_error);
    CHECK(apir::load_library_error(6).code() == Errc::library_error);
    CHECK(apir::load_library_error(6).wire_code() == 6);
    CHECK(apir::load_library_error(12).code() == Errc::backend_init_unknown);
}

// ---------------------------------------------------------------------------
// FORWARD return codes

TEST_CASE("FORWARD codes 1..3 are the host's own failures", "[errors][forward]") {
    const std::vector<WireRow> rows = {
        {1, Errc::forward_no_dispatch, "FORWARD_NO_DISPATCH"},
        {2, Errc::forward_timeout, "FORWARD_TIMEOUT"},
        {3, Errc::forward_sync_streams_failed, "FORWARD_SYNC_STREAMS_FAILED"},
    };
    for (const auto& row : rows) {
        INFO("code " << row.wire);
        apir::Error e = apir::forward_error(row.wire);
        CHECK(e.code() == row.code);
        CHECK(e.name() == row.name);
        CHECK(e.name() == apir::forward_code_info(row.wire).name);
        CHECK(e.wire_code() == row.wire);
    }
    CHECK(apir::forward_error(2).category() == Category::timeout);
}

TEST_CASE("FORWARD code 4+6 means the backend has no such command", "[errors][forward]") {
    apir::Error e = apir::forward_error(4 + apir::forward_invalid_index);
    CHECK(e.code() == Errc::forward_invalid_index);
    CHECK(e.name() == "FORWARD_INVALID_INDEX");
    CHECK(e.category() == Category::invalid_argument);
    CHECK(e.wire_code() == 10);
}

TEST_CASE("FORWARD code 4+n carries the backend function's own return n", "[errors][forward]") {
    auto n = GENERATE(as<uint32_t>{}, 1, 2, 5, 7, 1000, 0xffffffff - 4);
    apir::Error e = apir::forward_error(4 + n);
    CHECK(e.code() == Errc::forward_backend_error);
    CHECK(e.category() == Category::backend);
    CHECK(e.wire_code() == 4 + n);
    CHECK(contains(e.detail(), fmt::format("returned {}", n)));
}

// ---------------------------------------------------------------------------
// The table behind error_info() and the decoding of return codes

TEST_CASE("the error table has one row per code, in enum order, with unique names",
          "[errors][table]") {
    STATIC_REQUIRE(apir::errc_rows::rows_in_enum_order());
    STATIC_REQUIRE(apir::errc_rows::names_unique());
    STATIC_REQUIRE(apir::errc_rows::wire_codes_decode_to_their_row());
    STATIC_REQUIRE(apir::errc_rows::categories_in_enum_order());
    STATIC_REQUIRE(apir::error_info(Errc::load_cannot_open).name == "LOAD_CANNOT_OPEN");
    REQUIRE(std::size(apir::error_table) == error_count);
    std::set<std::string_view> names;
    for (unsigned i = 0; i < error_count; ++i) {
        const apir::ErrcRow& row = apir::error_table[i];
        INFO("row " << i << ": " << row.info.name);
        CHECK(static_cast<unsigned>(row.code) == i);
        CHECK_FALSE(row.info.name.empty());
        CHECK_FALSE(row.info.message.empty());
        CHECK(names.insert(row.info.name).second);
        CHECK(apir::error_info(row.code).name == row.info.name);
        CHECK(apir::error_info(row.code).message == row.info.message);
        CHECK(apir::error_info(row.code).category == row.info.category);
    }
    for (size_t i = 0; i < std::size(apir::category_names); ++i)
        CHECK(static_cast<size_t>(apir::category_names[i].first) == i);
}

TEST_CASE("every wire code of a row decodes into that row's error", "[errors][table]") {
    unsigned with_wire = 0;
    for (const apir::ErrcRow& row : apir::error_table) {
        if (row.wire.command == apir::WireCommand::none) continue;
        ++with_wire;
        INFO(row.info.name << " [" << row.wire.first << ".." << row.wire.last << "]");
        auto decode = [&](uint32_t code) {
            return row.wire.command == apir::WireCommand::load_library
                       ? apir::load_library_error(code)
                       : apir::forward_error(code);
        };
        for (uint32_t code : {row.wire.first, row.wire.last}) {
            apir::Error e = decode(code);
            CHECK(e.code() == row.code);
            CHECK(e.wire_code() == code);
        }
    }
    // LOAD_* 5, LIBRARY_* 5, BACKEND_* 10, FORWARD_* 5.
    CHECK(with_wire == 25);
}

TEST_CASE("every LOADLIBRARY and FORWARD code decodes as the table says", "[errors][table]") {
    std::vector<uint32_t> codes;
    for (uint32_t c = 0; c < 64; ++c)
        codes.push_back(c);
    for (uint32_t c : {1000u, 0x7fffffffu, 0xfffffffeu, 0xffffffffu})
        codes.push_back(c);
    for (uint32_t code : codes) {
        INFO("code " << code);
        const apir::ErrcRow* load = apir::wire_row(apir::WireCommand::load_library, code);
        CHECK(apir::load_library_error(code).code() == (load ? load->code : Errc::library_error));
        const apir::ErrcRow* fwd = apir::wire_row(apir::WireCommand::forward, code);
        CHECK(apir::forward_error(code).code() == (fwd ? fwd->code : Errc::decode_bad_value));
        if (load) CHECK(load->wire.contains(apir::WireCommand::load_library, code));
        if (fwd) CHECK(fwd->wire.contains(apir::WireCommand::forward, code));
    }
    // Only the codes that mean success to the host belong to no row.
    CHECK(apir::wire_row(apir::WireCommand::load_library, 0) == nullptr);
    CHECK(apir::wire_row(apir::WireCommand::load_library, 6) == nullptr);
    CHECK(apir::wire_row(apir::WireCommand::forward, 0) == nullptr);
    CHECK(apir::wire_row(apir::WireCommand::none, 1) == nullptr);
}

TEST_CASE("errors decoded from a protocol code share its name and message", "[errors][table]") {
    for (uint32_t c = 1; c < 6; ++c) {
        auto i = apir::error_info(apir::load_library_error(c).code());
        CHECK(i.name == apir::load_library_code_info(c).name);
        CHECK(i.message == apir::load_library_code_info(c).message);
    }
    for (uint32_t c = 1; c <= apir::backend_init_code_count; ++c) { // the last one is unknown
        auto i = apir::error_info(apir::load_library_error(12 + c).code());
        CHECK(i.name == apir::backend_init_code_info(c).name);
        CHECK(i.message == apir::backend_init_code_info(c).message);
    }
    for (uint32_t c : {1u, 2u, 3u, 5u}) {
        auto i = apir::error_info(apir::forward_error(c).code());
        CHECK(i.name == apir::forward_code_info(c).name);
        CHECK(i.message == apir::forward_code_info(c).message);
    }
}

// ---------------------------------------------------------------------------
// Expected<T>

namespace {
struct NoDefault {
    explicit NoDefault(int v) : value(v) {}
    int value;
};

apir::Expected<int> parse(bool ok) {
    if (!ok) return apir::fail(Errc::invalid_argument, "not a number");
    return 42;
}

apir::Expected<std::string> twice(bool ok) {
    APIR_TRY(parse(ok));
    return std::string("parsed twice");
}

apir::Expected<void> check_only(bool ok) {
    APIR_TRY(parse(ok));
    return {};
}
} // namespace

TEST_CASE("Expected<T> holds a value or an Error", "[errors][expected]") {
    apir::Expected<int> v = 5;
    REQUIRE(v.has_value());
    CHECK(static_cast<bool>(v));
    CHECK(*v == 5);
    CHECK(v.value() == 5);

    apir::Expected<int> e = apir::fail(Errc::timeout, "after 2 s");
    CHECK_FALSE(e.has_value());
    CHECK_FALSE(static_cast<bool>(e));
    CHECK(e.error().code() == Errc::timeout);
    CHECK(e.error().detail() == "after 2 s");

    apir::Expected<int> from_error = apir::Error(Errc::no_device);
    CHECK(from_error.error() == Errc::no_device);

    apir::Expected<int> defaulted;
    REQUIRE(defaulted.has_value());
    CHECK(*defaulted == 0);
}

TEST_CASE("Expected<T> gives access to the value and moves it out", "[errors][expected]") {
    apir::Expected<std::string> s = std::string("payload");
    CHECK(s->size() == 7);
    *s += "!";
    std::string moved = std::move(s).value();
    CHECK(moved == "payload!");

    apir::Expected<std::string> failed = apir::fail(Errc::disconnected, "peer gone");
    apir::Error err = std::move(failed).error();
    CHECK(err.detail() == "peer gone");
}

TEST_CASE("Expected<T> needs a default-constructible T only for its default constructor",
          "[errors][expected]") {
    STATIC_REQUIRE(std::is_default_constructible_v<apir::Expected<int>>);
    STATIC_REQUIRE_FALSE(std::is_default_constructible_v<apir::Expected<NoDefault>>);
    apir::Expected<NoDefault> v = NoDefault(3);
    CHECK(v->value == 3);
}

TEST_CASE("Expected<void> is success by default or an Error", "[errors][expected]") {
    apir::Expected<void> ok;
    CHECK(ok.has_value());
    CHECK(static_cast<bool>(ok));

    apir::Expected<void> failed = apir::fail(Errc::unsupported);
    CHECK_FALSE(failed.has_value());
    CHECK(failed.error().code() == Errc::unsupported);

    apir::Expected<void> from_error = apir::Error(Errc::device_error).with_errno(5);
    CHECK(from_error.error().sys_errno() == 5);
}

TEST_CASE("APIR_TRY returns the error of a failed step and carries on after a good one",
          "[errors][expected]") {
    CHECK(twice(true).value() == "parsed twice");
    auto r = twice(false);
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().code() == Errc::invalid_argument);
    CHECK(r.error().detail() == "not a number");

    CHECK(check_only(true).has_value());
    CHECK(check_only(false).error().code() == Errc::invalid_argument);
}
