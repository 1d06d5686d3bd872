// The result JSON (schema v1, RESULTS.md): its validator and its sanity guards.
#pragma once
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace lss {

inline constexpr int kResultSchemaVersion = 1;

// Every way `result` departs from schema v1 (missing fields, wrong types or units, impossible
// values), one message each naming the field; empty when it is valid.
std::vector<std::string> validate_result(const nlohmann::ordered_json& result);

// The sanity guards: the reason a measured result cannot be trusted, or "" when none applies.
// A non-finite loss; TFLOP/s per device above the stated or the datasheet peak; collective
// counts that differ from the analytic model; a failed --check.
std::string sanity_verdict(const nlohmann::ordered_json& result);

// `lssbench validate FILE...`: validates each file; exit 0 when all are valid.
int cmd_validate(const std::vector<std::string>& args);

}  // namespace lss
