// libFuzzer harness: the input documents of `switchyard route` and `switchyard layer`, through
// the same parser and math the CLI runs (examples/switchyard/documents.hpp). Bad input must end
// in a switchyard error or a precondition error with a message; nothing may crash, hang or trip
// a sanitizer. The first byte picks the command.
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string_view>

#include "documents.hpp"

namespace sy = switchyard;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const bool layer = data[0] & 1;
  const std::string_view text(reinterpret_cast<const char*>(data + 1), size - 1);
  std::vector<sy::problem> syntax;
  const boost::json::value doc = sy::parse_json_text(text, syntax, "fuzz");
  if (!syntax.empty()) return 0;
  try {
    const boost::json::object out =
        layer ? sy::cli::layer_document(doc) : sy::cli::route_document(doc);
    std::string s;
    sy::cli::write_json(out, s);
    if (s.empty()) __builtin_trap();
  } catch (const sy::error& e) {
    if (std::string_view(e.what()).empty()) __builtin_trap();
  } catch (const std::logic_error& e) {  // precondition_error: a message with the values
    if (std::string_view(e.what()).empty()) __builtin_trap();
  }
  return 0;
}
