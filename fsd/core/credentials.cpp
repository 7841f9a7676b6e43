#include "fsd/core/credentials.h"

#include <linux/capability.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <grp.h>
#include <pwd.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>

namespace fsd {
namespace {

std::atomic<uint64_t> g_next_id{1};

struct Table {
  std::mutex mu;
  std::map<std::vector<uint32_t>, Credentials*> by_key;  // (uid, gid, groups...)
};
Table& table() {
  static Table* t = new Table;  // never destroyed: Refs may outlive main's statics
  return *t;
}

std::vector<uint32_t> key_of(uid_t uid, gid_t gid, std::span<const gid_t> groups) {
  std::vector<uint32_t> k{uid, gid};
  k.insert(k.end(), groups.begin(), groups.end());
  return k;
}

bool has_setid_caps() {
  __user_cap_header_struct h{_LINUX_CAPABILITY_VERSION_3, 0};
  __user_cap_data_struct d[2]{};
  if (syscall(SYS_capget, &h, d) != 0) return false;
  auto effective = [&](int cap) { return (d[cap / 32].effective & (1u << (cap % 32))) != 0; };
  return effective(CAP_SETUID) && effective(CAP_SETGID);
}

// What fsd is and may do, read at start and again in its sandbox
// (Credentials::reread), while it has one thread; read-only after.
struct IdRange {
  uint32_t first;
  uint64_t end;  // one past the last
};
struct Self {
  Credentials::Ref me;
  bool switching = false;
  std::vector<IdRange> uids, gids;  // empty: every id (no user namespace read)
};
Self* g_self = nullptr;

std::vector<IdRange> read_id_map(const char* file) {
  std::vector<IdRange> out;
  std::ifstream in(file);
  for (uint64_t inside, outside, count; in >> inside >> outside >> count;)
    out.push_back({static_cast<uint32_t>(inside), inside + count});
  return out;
}

bool in_ranges(const std::vector<IdRange>& ranges, uint32_t id) {
  if (ranges.empty()) return true;
  for (const auto& r : ranges)
    if (id >= r.first && id < r.end) return true;
  return false;
}

uint64_t ids_in(const std::vector<IdRange>& ranges) {
  uint64_t n = 0;
  for (const auto& r : ranges) n += r.end - r.first;
  return n;
}

Credentials::Ref own_identity() {
  std::vector<gid_t> groups(static_cast<size_t>(std::max(::getgroups(0, nullptr), 0)));
  groups.resize(static_cast<size_t>(std::max(::getgroups(static_cast<int>(groups.size()), groups.data()), 0)));
  return Credentials::get(::geteuid(), ::getegid(), groups);
}

Self& self_state() {
  static const bool made = [] {
    g_self = new Self;  // never destroyed: Refs may outlive main's statics
    g_self->me = own_identity();
    g_self->switching = has_setid_caps();
    return true;
  }();
  (void)made;
  return *g_self;
}

[[noreturn]] void refused(const char* what, unsigned id) {
  std::fprintf(stderr, "fsd: the kernel refused %s(%u) for a request's identity; stopping rather than act as another\n",
               what, id);
  std::abort();
}

// The thread's file-system identity becomes (uid, gid, groups).
void switch_thread(uid_t uid, gid_t gid, std::span<const gid_t> groups) {
  if (syscall(SYS_setgroups, groups.size(), groups.data()) != 0) refused("setgroups", static_cast<unsigned>(groups.size()));
  syscall(SYS_setfsgid, gid);
  if (static_cast<gid_t>(syscall(SYS_setfsgid, -1)) != gid) refused("setfsgid", gid);
  syscall(SYS_setfsuid, uid);
  if (static_cast<uid_t>(syscall(SYS_setfsuid, -1)) != uid) refused("setfsuid", uid);
}

thread_local Credentials::Ref t_applied;  // null: fsd itself

}  // namespace

Credentials::Ref Credentials::get(uid_t uid, gid_t gid, std::span<const gid_t> groups) {
  const Self* ns = g_self;  // null while fsd's own identity is being read
  std::vector<gid_t> sorted;
  for (gid_t g : groups)
    if (ns == nullptr || in_ranges(ns->gids, g)) sorted.push_back(g);
  std::sort(sorted.begin(), sorted.end());
  sorted.erase(std::unique(sorted.begin(), sorted.end()), sorted.end());
  if (sorted.size() > kMaxGroups) sorted.resize(kMaxGroups);
  auto key = key_of(uid, gid, sorted);
  Table& t = table();
  std::lock_guard g(t.mu);
  if (auto it = t.by_key.find(key); it != t.by_key.end()) {
    // Taken only if still alive: one whose count reached 0 is being
    // deleted by its last holder, and is replaced here.
    auto& refs = it->second->refs_;
    for (uint32_t r = refs.load(std::memory_order_relaxed); r != 0;)
      if (refs.compare_exchange_weak(r, r + 1, std::memory_order_acq_rel)) return Ref(it->second, false);
  }
  bool mapped = ns == nullptr || (in_ranges(ns->uids, uid) && in_ranges(ns->gids, gid));
  auto* c = new Credentials(uid, gid, std::move(sorted), g_next_id.fetch_add(1, std::memory_order_relaxed), mapped);
  t.by_key[std::move(key)] = c;
  return Ref(c);
}

void intrusive_ptr_release(const Credentials* c) {
  if (c->refs_.fetch_sub(1, std::memory_order_acq_rel) != 1) return;
  Table& t = table();
  {
    std::lock_guard g(t.mu);
    auto it = t.by_key.find(key_of(c->uid_, c->gid_, c->groups_));
    if (it != t.by_key.end() && it->second == c) t.by_key.erase(it);
  }
  delete c;
}

const Credentials::Ref& Credentials::self() { return self_state().me; }

bool Credentials::switching() { return self_state().switching; }

void Credentials::reread() {
  Self& s = self_state();
  s.uids = read_id_map("/proc/self/uid_map");
  s.gids = read_id_map("/proc/self/gid_map");
  std::ifstream setgroups("/proc/self/setgroups");
  std::string word;
  setgroups >> word;
  Self* before = g_self;
  g_self = nullptr;  // fsd's own groups as they are
  s.me = own_identity();
  g_self = before;
  // Acting as others in a user namespace needs more than fsd's own uid
  // mapped, and setgroups allowed (else each request would keep fsd's own
  // supplementary groups).
  s.switching = has_setid_caps() && ids_in(s.uids) > 1 && (word.empty() || word == "allow");
}

size_t Credentials::interned() {
  Table& t = table();
  std::lock_guard g(t.mu);
  return t.by_key.size();
}

namespace {
struct UserEntry {
  gid_t gid;
  std::vector<gid_t> groups;
};
std::mutex g_users_mu;
std::map<uid_t, UserEntry>* g_users = nullptr;  // the snapshot, once taken
}  // namespace

void Credentials::snapshot_user_database() {
  constexpr size_t kMaxUsers = 100000;
  auto users = std::make_unique<std::map<uid_t, UserEntry>>();
  std::map<std::string, uid_t> by_name;
  ::setpwent();
  while (passwd* pw = ::getpwent()) {
    if (users->size() == kMaxUsers) break;
    if (users->emplace(pw->pw_uid, UserEntry{pw->pw_gid, {pw->pw_gid}}).second) by_name[pw->pw_name] = pw->pw_uid;
  }
  ::endpwent();
  ::setgrent();
  while (group* gr = ::getgrent()) {
    for (char** m = gr->gr_mem; m && *m; m++) {
      auto it = by_name.find(*m);
      if (it == by_name.end()) continue;
      auto& groups = (*users)[it->second].groups;
      if (groups.size() < kMaxGroups) groups.push_back(gr->gr_gid);
    }
  }
  ::endgrent();
  std::lock_guard g(g_users_mu);
  delete g_users;
  g_users = users.release();
}

Credentials::Ref Credentials::of_user(uid_t uid) {
  constexpr gid_t kNogroup = 65534;
  {
    std::lock_guard g(g_users_mu);
    if (g_users != nullptr) {
      auto it = g_users->find(uid);
      if (it == g_users->end()) return get(uid, kNogroup);
      return get(uid, it->second.gid, it->second.groups);
    }
  }
  std::vector<char> buf(16384);
  passwd pw{};
  passwd* found = nullptr;
  if (::getpwuid_r(uid, &pw, buf.data(), buf.size(), &found) != 0 || found == nullptr) return get(uid, kNogroup);
  std::vector<gid_t> groups(kMaxGroups);
  int n = static_cast<int>(groups.size());
  if (::getgrouplist(pw.pw_name, pw.pw_gid, groups.data(), &n) < 0) n = static_cast<int>(groups.size());
  groups.resize(static_cast<size_t>(std::max(n, 0)));
  return get(uid, pw.pw_gid, groups);
}

std::vector<gid_t> Credentials::groups_of_process(pid_t pid) {
  std::vector<gid_t> groups;
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  for (std::string line; std::getline(in, line);) {
    if (!line.starts_with("Groups:")) continue;
    std::istringstream words(line.substr(7));
    for (unsigned long g; groups.size() < kMaxGroups && words >> g;) groups.push_back(static_cast<gid_t>(g));
    break;
  }
  return groups;
}

bool Credentials::in_group(gid_t gid) const {
  return gid == gid_ || std::binary_search(groups_.begin(), groups_.end(), gid);
}

const Credentials* Credentials::applied() { return t_applied.get(); }

void Credentials::apply(const Credentials* c) {
  if (c != nullptr && c->is_self()) c = nullptr;
  if (t_applied.get() == c || !switching()) return;
  const Credentials& to = c ? *c : *self();
  switch_thread(to.uid_, to.gid_, to.groups_);
  t_applied = Ref(c);
}

Credentials::AsSelf::AsSelf() : before_(t_applied) { apply(nullptr); }
Credentials::AsSelf::~AsSelf() { apply(before_.get()); }

}  // namespace fsd
