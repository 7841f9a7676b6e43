#include "common/closure.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include <climits>
#include <cstring>

namespace fsd {
namespace {

std::string read_all(const std::filesystem::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read '" + file.string() + "'");
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) throw std::runtime_error("cannot read '" + file.string() + "'");
  return std::move(text).str();
}

}  // namespace

Closure Closure::load(const std::string& path) {
  namespace fs = std::filesystem;
  Closure c;
  std::error_code ec;
  auto kind = fs::status(path, ec).type();
  if (ec || kind == fs::file_type::not_found) throw std::runtime_error("closure '" + path + "': no such file");
  try {
    if (kind != fs::file_type::directory) {
      c.add_list(read_all(path), path);
    } else if (fs::is_regular_file(fs::path(path) / "store-paths")) {
      c.add_list(read_all(fs::path(path) / "store-paths"), (fs::path(path) / "store-paths").string());
    } else {
      std::vector<fs::path> lists;
      for (const auto& e : fs::directory_iterator(path))
        if (e.is_regular_file()) lists.push_back(e.path());
      std::sort(lists.begin(), lists.end());
      for (const auto& l : lists) c.add_list(read_all(l), l.string());
    }
  } catch (const std::invalid_argument& e) {
    throw std::runtime_error(e.what());
  } catch (const fs::filesystem_error& e) {
    throw std::runtime_error("closure '" + path + "': " + e.code().message());
  }
  if (c.names_.empty()) throw std::runtime_error("closure '" + path + "' lists no store paths");
  return c;
}

void Closure::add_list(std::string_view text, const std::string& origin) {
  size_t line = 0;
  while (!text.empty()) {
    line++;
    size_t end = text.find('\n');
    std::string_view l = text.substr(0, end);
    text = end == std::string_view::npos ? std::string_view{} : text.substr(end + 1);
    while (!l.empty() && (l.back() == '\r' || l.back() == ' ' || l.back() == '\t')) l.remove_suffix(1);
    while (!l.empty() && (l.front() == ' ' || l.front() == '\t')) l.remove_prefix(1);
    if (l.empty() || l.front() == '#') continue;
    add(l, origin + ":" + std::to_string(line));
  }
}

void Closure::add(std::string_view line, const std::string& where) {
  std::string_view name = line;
  while (name.size() > 1 && name.back() == '/') name.remove_suffix(1);
  if (auto slash = name.rfind('/'); slash != std::string_view::npos) name = name.substr(slash + 1);
  if (name.empty() || name == "." || name == ".." || name.size() > NAME_MAX || name.find('\0') != std::string_view::npos)
    throw std::invalid_argument(where + ": '" + std::string(line) + "' names no store entry");
  names_.emplace(name);
}

bool Closure::shows(std::string_view name) const { return names_.contains(name); }

std::vector<std::string> Closure::names() const {
  std::vector<std::string> v(names_.begin(), names_.end());
  std::sort(v.begin(), v.end());
  return v;
}

}  // namespace fsd
