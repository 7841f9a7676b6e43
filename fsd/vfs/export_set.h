// ExportSet: the exports a server offers, each a Vfs; a 9P attach picks one
// by its aname, and main.cpp wires each transport to one by tag.
#pragma once

#include <memory>
#include <string_view>
#include <vector>

namespace fsd {

class Vfs;

class ExportSet {
 public:
  ExportSet();
  ~ExportSet();
  ExportSet(ExportSet&&) noexcept;
  ExportSet& operator=(ExportSet&&) noexcept;

  void add(std::unique_ptr<Vfs> vfs);
  // An export owned elsewhere (it must outlive this set).
  void add_borrowed(Vfs* vfs);
  // By tag, by host path, or the only export for an empty aname; or null.
  Vfs* find(std::string_view aname) const;
  const std::vector<Vfs*>& all() const { return exports_; }

 private:
  std::vector<Vfs*> exports_;
  std::vector<std::unique_ptr<Vfs>> owned_;
};

}  // namespace fsd
