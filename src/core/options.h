// Long-option command-line parsing for the subcommands: every option has a default shown in
// --help; sizes take K/M/G suffixes (binary: 16K = 16384); bad input throws UsageError naming the
// option and the value.
#pragma once
#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

namespace lss {

// "16K" -> 16384, "1M" -> 1048576, "12" -> 12. Throws UsageError naming `what` and the text.
int64_t parse_size(const std::string& text, const std::string& what);
double parse_double(const std::string& text, const std::string& what);

class OptionParser {
 public:
  explicit OptionParser(std::string usage) : usage_(std::move(usage)) {}

  // --name VALUE (sizes accept K/M/G suffixes).
  void add_size(const std::string& name, int64_t def, const std::string& help);
  void add_double(const std::string& name, double def, const std::string& help);
  void add_string(const std::string& name, const std::string& def, const std::string& help);
  // --name / --no-name.
  void add_flag(const std::string& name, bool def, const std::string& help);

  // Parses args (without the program and subcommand names). Returns false if --help was given.
  bool parse(const std::vector<std::string>& args);
  std::string help() const;

  int64_t size(const std::string& name) const;
  double real(const std::string& name) const;
  const std::string& str(const std::string& name) const;
  bool flag(const std::string& name) const;
  // Whether the command line gave the option (as --name, --no-name or --name=...), not its default.
  bool given(const std::string& name) const;
  // The options as given or defaulted, for the result JSON's config.
  const std::map<std::string, std::string>& values() const { return values_; }

 private:
  enum class Kind { size, real, string, flag };
  struct Spec {
    Kind kind;
    std::string def, help;
  };
  const Spec& spec(const std::string& name) const;
  std::string usage_;
  std::vector<std::string> order_;
  std::map<std::string, Spec> specs_;
  std::map<std::string, std::string> values_;
  std::set<std::string> given_;
};

}  // namespace lss
