#include "core/options.h"

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <fmt/format.h>

#include "core/check.h"

namespace lss {

int64_t parse_size(const std::string& text, const std::string& what) {
  if (text.empty()) throw UsageError(what + ": empty value");
  std::string digits = text;
  int64_t mult = 1;
  switch (text.back()) {
    case 'K': case 'k': mult = int64_t{1} << 10; digits.pop_back(); break;
    case 'M': case 'm': mult = int64_t{1} << 20; digits.pop_back(); break;
    case 'G': case 'g': mult = int64_t{1} << 30; digits.pop_back(); break;
    default: break;
  }
  if (digits.empty() || digits.find_first_not_of("0123456789-+") != std::string::npos ||
      digits.find_first_of("-+", 1) != std::string::npos)
    throw UsageError(what + ": '" + text + "' is not a whole number (suffixes K, M, G allowed)");
  errno = 0;
  char* end = nullptr;
  const long long v = std::strtoll(digits.c_str(), &end, 10);
  if (errno == ERANGE || *end != '\0') throw UsageError(what + ": '" + text + "' is out of range");
  if (v != 0 && std::llabs(v) > INT64_MAX / mult) throw UsageError(what + ": '" + text + "' is out of range");
  return static_cast<int64_t>(v) * mult;
}

double parse_double(const std::string& text, const std::string& what) {
  errno = 0;
  char* end = nullptr;
  const double v = std::strtod(text.c_str(), &end);
  if (text.empty() || *end != '\0' || errno == ERANGE || !std::isfinite(v))
    throw UsageError(what + ": '" + text + "' is not a finite number");
  return v;
}

namespace {
// A size as --help shows it: with the largest suffix that divides it (16777216 as 16M).
std::string size_text(int64_t v) {
  for (auto [suffix, mult] : {std::pair{'G', int64_t{1} << 30}, {'M', int64_t{1} << 20}, {'K', int64_t{1} << 10}})
    if (v != 0 && v % mult == 0) return std::to_string(v / mult) + suffix;
  return std::to_string(v);
}
}  // namespace

void OptionParser::add_size(const std::string& name, int64_t def, const std::string& help) {
  order_.push_back(name);
  specs_[name] = {Kind::size, size_text(def), help};
  values_[name] = std::to_string(def);
}
void OptionParser::add_double(const std::string& name, double def, const std::string& help) {
  order_.push_back(name);
  specs_[name] = {Kind::real, fmt::format("{}", def), help};
  values_[name] = fmt::format("{}", def);
}
void OptionParser::add_string(const std::string& name, const std::string& def, const std::string& help) {
  order_.push_back(name);
  specs_[name] = {Kind::string, def, help};
  values_[name] = def;
}
void OptionParser::add_flag(const std::string& name, bool def, const std::string& help) {
  order_.push_back(name);
  specs_[name] = {Kind::flag, def ? "true" : "false", help};
  values_[name] = def ? "true" : "false";
}

bool OptionParser::parse(const std::vector<std::string>& args) {
  for (size_t i = 0; i < args.size(); ++i) {
    std::string a = args[i];
    if (a == "--help" || a == "-h") return false;
    if (a.rfind("--", 0) != 0) throw UsageError("unexpected argument '" + a + "' (options start with --)");
    std::string name = a.substr(2), value;
    bool has_value = false;
    if (auto eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
      has_value = true;
    }
    auto it = specs_.find(name);
    if (it == specs_.end() && name.rfind("no-", 0) == 0) {
      auto neg = specs_.find(name.substr(3));
      if (neg != specs_.end() && neg->second.kind == Kind::flag && !has_value) {
        values_[name.substr(3)] = "false";
        given_.insert(name.substr(3));
        continue;
      }
    }
    if (it == specs_.end()) throw UsageError("unknown option '--" + name + "' (see --help)");
    const Spec& s = it->second;
    if (s.kind == Kind::flag) {
      if (has_value) throw UsageError("option --" + name + " takes no value (use --" + name + " or --no-" + name + ")");
      values_[name] = "true";
      given_.insert(name);
      continue;
    }
    if (!has_value) {
      // A number never starts with "--": "--iters --out x" is a missing value, not a bad one.
      if (i + 1 >= args.size() || (s.kind != Kind::string && args[i + 1].rfind("--", 0) == 0))
        throw UsageError("option --" + name + " needs a value");
      value = args[++i];
    }
    // Validate now, so that a bad number is reported before any work starts.
    if (s.kind == Kind::size) parse_size(value, "--" + name);
    if (s.kind == Kind::real) parse_double(value, "--" + name);
    values_[name] = value;
    given_.insert(name);
  }
  return true;
}

const OptionParser::Spec& OptionParser::spec(const std::string& name) const {
  auto it = specs_.find(name);
  LSS_CHECK(it != specs_.end(), "option --" + name + " was never declared");
  return it->second;
}

int64_t OptionParser::size(const std::string& name) const {
  spec(name);
  return parse_size(values_.at(name), "--" + name);
}
double OptionParser::real(const std::string& name) const {
  spec(name);
  return parse_double(values_.at(name), "--" + name);
}
const std::string& OptionParser::str(const std::string& name) const {
  spec(name);
  return values_.at(name);
}
bool OptionParser::flag(const std::string& name) const {
  spec(name);
  return values_.at(name) == "true";
}

bool OptionParser::given(const std::string& name) const {
  spec(name);
  return given_.count(name) > 0;
}

std::string OptionParser::help() const {
  std::string out = usage_ + "\n\nOptions (default in brackets):\n";
  for (const auto& name : order_) {
    const Spec& s = specs_.at(name);
    std::string left = "  --" + name;
    if (s.kind == Kind::flag) left += ", --no-" + name;
    else if (s.kind == Kind::size) left += " N";
    else if (s.kind == Kind::real) left += " X";
    else left += " S";
    out += fmt::format("{:<30} {} [{}]\n", left, s.help, s.def.empty() ? "none" : s.def);
  }
  out += "  --help                         this text\n";
  return out;
}

}  // namespace lss
