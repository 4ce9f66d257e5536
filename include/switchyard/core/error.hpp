#pragma once
/// \file Exception types and the precondition macro (CONVENTIONS.md, "Errors").

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace switchyard {

/// Base of every runtime error Switchyard throws.
class error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// A configuration (or an input document) is invalid; the message names the JSON path and rule.
class config_error : public error {
 public:
  using error::error;
};

/// A CUDA, cuBLAS or CUB call failed; the message holds the call, file, line and error string.
class cuda_error : public error {
 public:
  using error::error;
};

/// A collective failed, timed out or the ranks disagree.
class comm_error : public error {
 public:
  using error::error;
};

/// Bad numbers in an input (NaN, Inf) detected by a check.
class numeric_error : public error {
 public:
  using error::error;
};

/// A broken API precondition (a caller bug): wrong shapes, null pointers, sizes out of range.
class precondition_error : public std::logic_error {
 public:
  using std::logic_error::logic_error;
};

namespace detail {

template <class... Args>
std::string concat(Args&&... args) {
  std::ostringstream os;
  (os << ... << std::forward<Args>(args));
  return os.str();
}

[[noreturn]] inline void throw_precondition(const char* cond, const std::string& msg,
                                            const char* file, int line) {
  throw precondition_error(concat(msg, " (precondition `", cond, "` failed at ", file, ":", line,
                                  ")"));
}

}  // namespace detail
}  // namespace switchyard

/// Checks an API precondition; the message may be any streamable expression sequence built with
/// switchyard::detail::concat.
#define SY_EXPECTS(cond, msg)                                                     \
  do {                                                                            \
    if (!(cond)) ::switchyard::detail::throw_precondition(#cond, (msg), __FILE__, \
                                                          __LINE__);              \
  } while (0)
