#include "report.hpp"

#include <cmath>
#include <fmt/format.h>

namespace apir_bench {
namespace {

std::string json_string(std::string_view s) {
    std::string out = "\"";
    for (char c : s) {
        if (c == '"' || c == '\\') {
            out += '\\';
            out += c;
        } else if (static_cast<unsigned char>(c) < 0x20) {
            out += fmt::format("\\u{:04x}", static_cast<unsigned>(c));
        } else {
            out += c;
        }
    }
    return out + '"';
}

std::string json_number(double v, int decimals) {
    if (!std::isfinite(v)) return "null"; // JSON has no inf or nan
    return fmt::format("{:.{}f}", v, decimals);
}

} // namespace

Result::Result(std::string bench, std::string title)
    : bench_(std::move(bench)), title_(std::move(title)) {}

Result Result::skipped(std::string bench, std::string why) {
    Result r(std::move(bench));
    r.skipped_ = std::move(why);
    return r;
}

Result& Result::number(std::string key, double value, int decimals, std::string label,
                       std::string unit) {
    std::string text = std::isfinite(value) ? fmt::format("{:.{}f}", value, decimals) : "-";
    if (!unit.empty()) text += " " + unit;
    fields_.push_back({std::move(key), json_number(value, decimals), std::move(label), text});
    return *this;
}

Result& Result::integer(std::string key, uint64_t value, std::string label, std::string unit) {
    std::string text = fmt::format("{}", value);
    if (!unit.empty()) text += " " + unit;
    fields_.push_back({std::move(key), fmt::format("{}", value), std::move(label), text});
    return *this;
}

Result& Result::flag(std::string key, bool value, std::string label) {
    fields_.push_back(
        {std::move(key), value ? "true" : "false", std::move(label), value ? "yes" : "no"});
    return *this;
}

Result& Result::target(std::string name, double ratio, bool met, std::string rule) {
    targets_.push_back({std::move(name), std::move(rule), ratio, met});
    return *this;
}

bool Result::all_met() const {
    for (const auto& t : targets_)
        if (!t.met) return false;
    return true;
}

std::string Result::json() const {
    std::string out = "{\"bench\":" + json_string(bench_);
    if (!skipped_.empty()) return out + ",\"skipped\":" + json_string(skipped_) + "}";
    for (const auto& f : fields_)
        out += "," + json_string(f.key) + ":" + f.json;
    const bool several = targets_.size() > 1;
    for (const auto& t : targets_) {
        const std::string suffix = several ? "_" + t.name : "";
        out += ",\"target" + suffix + "\":" + json_string(t.rule);
        if (std::isfinite(t.ratio)) out += ",\"ratio" + suffix + "\":" + json_number(t.ratio, 3);
        out += ",\"meets_target" + suffix + "\":" + (t.met ? "true" : "false");
    }
    if (several) out += std::string(",\"meets_target\":") + (all_met() ? "true" : "false");
    return out + "}";
}

std::string Result::table() const {
    std::string out = fmt::format("{}", bench_);
    if (!title_.empty()) out += fmt::format(" — {}", title_);
    out += "\n";
    if (!skipped_.empty()) return out + fmt::format("  skipped: {}\n", skipped_);
    for (const auto& f : fields_)
        if (!f.label.empty()) out += fmt::format("  {:<44} {:>14}\n", f.label, f.text);
    for (const auto& t : targets_)
        out += fmt::format("  target {:<37} {:>14}   {}\n", t.rule,
                           std::isfinite(t.ratio) ? fmt::format("ratio {:.3f}", t.ratio) : "-",
                           t.met ? "met" : "MISSED");
    return out;
}

} // namespace apir_bench
