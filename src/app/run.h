#pragma once
#include <string>
#include <vector>

namespace lss {
// `lssbench run`: one configuration, one MPI job. Returns the process exit code.
int cmd_run(const std::vector<std::string>& args, const std::string& command_line);
}
