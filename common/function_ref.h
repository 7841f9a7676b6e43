// FunctionRef<R(Args...)>: a non-owning reference to a callable, for
// callbacks that run before the call taking them returns (no allocation,
// unlike std::function). The callable must outlive the call.
#pragma once

#include <memory>
#include <type_traits>
#include <utility>

namespace fsd {

template <class Sig>
class FunctionRef;

template <class R, class... Args>
class FunctionRef<R(Args...)> {
 public:
  template <class F>
    requires(!std::is_same_v<std::remove_cvref_t<F>, FunctionRef> && std::is_invocable_r_v<R, F&, Args...>)
  FunctionRef(F&& f)  // NOLINT(google-explicit-constructor)
      : obj_(const_cast<void*>(static_cast<const void*>(std::addressof(f)))),
        call_([](void* o, Args... a) -> R { return (*static_cast<std::remove_reference_t<F>*>(o))(std::forward<Args>(a)...); }) {}

  // Empty: refers to nothing (calling it is an error).
  FunctionRef() = default;
  explicit operator bool() const { return call_ != nullptr; }

  R operator()(Args... a) const { return call_(obj_, std::forward<Args>(a)...); }

 private:
  void* obj_ = nullptr;
  R (*call_)(void*, Args...) = nullptr;
};

}  // namespace fsd
