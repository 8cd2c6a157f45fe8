// One benchmark's result: printed as one JSON object per line (--json) or as a
// readable block of the table.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace apir_bench {

class Result {
public:
    explicit Result(std::string bench, std::string title = {});
    /// A line that says why the benchmark did not run.
    static Result skipped(std::string bench, std::string why);

    /// A measured or configured number. label/unit: how the table shows it
    /// (no label: JSON only).
    Result& number(std::string key, double value, int decimals, std::string label = {},
                   std::string unit = {});
    Result& integer(std::string key, uint64_t value, std::string label = {}, std::string unit = {});
    Result& flag(std::string key, bool value, std::string label = {});
    /// A target: the ratio it is judged on (NaN: none), whether it is met, the rule
    /// in words. A single target's keys are "target", "ratio" and "meets_target";
    /// with more than one, each gets "target_<name>", "ratio_<name>" and
    /// "meets_target_<name>", and "meets_target" is true when all are met.
    Result& target(std::string name, double ratio, bool met, std::string rule);

    [[nodiscard]] std::string json() const;
    [[nodiscard]] std::string table() const;
    [[nodiscard]] bool all_met() const;
    [[nodiscard]] const std::string& bench() const noexcept { return bench_; }

private:
    struct Field {
        std::string key, json, label, text;
    };
    struct Target {
        std::string name, rule;
        double ratio;
        bool met;
    };
    std::string bench_, title_, skipped_;
    std::vector<Field> fields_;
    std::vector<Target> targets_;
};

} // namespace apir_bench
