// Task<T>: a lazily started coroutine that produces a T, awaitable once.
// spawn(): runs a Task<void> to completion without anyone awaiting it.
//
// fsd runs one event loop per worker thread (see Ring); a request is a
// coroutine that suspends on io_uring operations and is resumed by the loop
// when they complete. Coroutine frames come from a per-thread free list, so
// the steady state does not call malloc per request.
#pragma once

#include <coroutine>
#include <cstddef>
#include <exception>
#include <optional>
#include <utility>

namespace fsd {

// Per-thread recycling allocator for coroutine frames (size classes of 64 bytes).
void* frame_alloc(std::size_t size);
void frame_free(void* p, std::size_t size) noexcept;

struct FrameAllocated {
  static void* operator new(std::size_t n) { return frame_alloc(n); }
  static void operator delete(void* p, std::size_t n) noexcept { frame_free(p, n); }
};

template <class T>
class Task;

namespace detail {

struct PromiseBase : FrameAllocated {
  std::coroutine_handle<> continuation = std::noop_coroutine();

  std::suspend_always initial_suspend() noexcept { return {}; }
  struct FinalAwaiter {
    bool await_ready() noexcept { return false; }
    template <class P>
    std::coroutine_handle<> await_suspend(std::coroutine_handle<P> h) noexcept {
      return h.promise().continuation;
    }
    void await_resume() noexcept {}
  };
  FinalAwaiter final_suspend() noexcept { return {}; }
  // fsd code does not throw on hot paths; an escaped exception is a bug.
  void unhandled_exception() noexcept { std::terminate(); }
};

template <class T>
struct Promise : PromiseBase {
  std::optional<T> value;
  Task<T> get_return_object() noexcept;
  template <class U>
  void return_value(U&& v) { value.emplace(std::forward<U>(v)); }
};

template <>
struct Promise<void> : PromiseBase {
  Task<void> get_return_object() noexcept;
  void return_void() noexcept {}
};

}  // namespace detail

template <class T = void>
class [[nodiscard]] Task {
 public:
  using promise_type = detail::Promise<T>;
  using Handle = std::coroutine_handle<promise_type>;

  Task() = default;
  explicit Task(Handle h) : h_(h) {}
  Task(Task&& o) noexcept : h_(std::exchange(o.h_, {})) {}
  Task& operator=(Task&& o) noexcept {
    if (this != &o) {
      if (h_) h_.destroy();
      h_ = std::exchange(o.h_, {});
    }
    return *this;
  }
  ~Task() {
    if (h_) h_.destroy();
  }

  bool await_ready() const noexcept { return false; }
  std::coroutine_handle<> await_suspend(std::coroutine_handle<> caller) noexcept {
    h_.promise().continuation = caller;
    return h_;
  }
  T await_resume() {
    if constexpr (!std::is_void_v<T>) return std::move(*h_.promise().value);
  }

  // For spawn() and synchronous drivers.
  Handle handle() const { return h_; }
  bool done() const { return !h_ || h_.done(); }

 private:
  Handle h_;
};

namespace detail {
template <class T>
Task<T> Promise<T>::get_return_object() noexcept {
  return Task<T>(std::coroutine_handle<Promise<T>>::from_promise(*this));
}
inline Task<void> Promise<void>::get_return_object() noexcept {
  return Task<void>(std::coroutine_handle<Promise<void>>::from_promise(*this));
}

// A coroutine that starts at once and frees itself when it finishes.
struct Detached {
  struct promise_type : FrameAllocated {
    Detached get_return_object() noexcept { return {}; }
    std::suspend_never initial_suspend() noexcept { return {}; }
    std::suspend_never final_suspend() noexcept { return {}; }
    void return_void() noexcept {}
    void unhandled_exception() noexcept { std::terminate(); }
  };
};
inline Detached run_detached(Task<void> t) { co_await std::move(t); }
}  // namespace detail

// Starts `t` now; it runs until its first suspension and is then driven by the
// thread's event loop. Its frame is freed when it finishes.
inline void spawn(Task<void> t) { detail::run_detached(std::move(t)); }

// A one-shot event several coroutines can wait for; set() resumes them in
// the order they started waiting. Single-threaded, like everything on a Ring.
class Event {
 public:
  struct Waiter {
    Event& event;
    std::coroutine_handle<> handle{};
    Waiter* next = nullptr;
    bool await_ready() const noexcept { return event.set_; }
    void await_suspend(std::coroutine_handle<> h) noexcept {
      handle = h;
      Waiter** p = &event.waiters_;
      while (*p) p = &(*p)->next;
      *p = this;
    }
    void await_resume() const noexcept {}
  };

  bool is_set() const { return set_; }
  Waiter wait() { return Waiter{*this}; }
  void set() {
    set_ = true;
    Waiter* w = std::exchange(waiters_, nullptr);
    while (w) {
      Waiter* next = w->next;  // w lives in a frame that resume() may free
      w->handle.resume();
      w = next;
    }
  }

 private:
  bool set_ = false;
  Waiter* waiters_ = nullptr;
};

}  // namespace fsd
