#include "fsd/vfs/export_set.h"

#include "fsd/vfs/vfs.h"

namespace fsd {

ExportSet::ExportSet() = default;
ExportSet::~ExportSet() = default;
ExportSet::ExportSet(ExportSet&&) noexcept = default;
ExportSet& ExportSet::operator=(ExportSet&&) noexcept = default;

void ExportSet::add(std::unique_ptr<Vfs> vfs) {
  exports_.push_back(vfs.get());
  owned_.push_back(std::move(vfs));
}

void ExportSet::add_borrowed(Vfs* vfs) { exports_.push_back(vfs); }

Vfs* ExportSet::find(std::string_view aname) const {
  if (aname.empty() && exports_.size() == 1) return exports_.front();
  for (Vfs* e : exports_)
    if (e->config().tag == aname) return e;
  // Clients such as diod's tools name the export by its host path.
  while (aname.size() > 1 && aname.back() == '/') aname.remove_suffix(1);
  for (Vfs* e : exports_) {
    std::string_view p = e->config().path;
    while (p.size() > 1 && p.back() == '/') p.remove_suffix(1);
    if (p == aname) return e;
  }
  return nullptr;
}

}  // namespace fsd
