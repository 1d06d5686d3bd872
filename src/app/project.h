#pragma once
#include <string>
#include <vector>

namespace lss {
// `lssbench project`: the analytic bound of one configuration on a grid that need not exist,
// priced in one process (README, "Projection"). Returns the process exit code.
int cmd_project(const std::vector<std::string>& args, const std::string& command_line);
}  // namespace lss
