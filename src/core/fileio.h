// Results are never lost or overwritten: files are written to a temporary name in the target's
// folder and then linked to the final name, which fails if that name exists.
#pragma once
#include <string>

namespace lss {

// Writes `content` to `path` atomically; throws std::runtime_error (naming the path) if the path
// exists already or cannot be written. Creates missing parent folders.
void write_file_atomic_no_overwrite(const std::string& path, const std::string& content);

// The current UTC time as 20261128T012345Z, for result names.
std::string utc_timestamp();

// True if something exists at `path`.
bool path_exists(const std::string& path);

}  // namespace lss
