// Parsing JSON from outside with a depth limit and errors that name the input, line and column.
#include "core/json_input.h"

#include <algorithm>

#include "core/errors.h"
#include "core/limits.h"

namespace l3c {

namespace {
// Line and column (1-based) of byte `offset` in text.
std::pair<size_t, size_t> line_and_column(std::string_view text, size_t offset) {
  offset = std::min(offset, text.size());
  size_t line = 1, line_start = 0;
  for (size_t i = 0; i < offset; ++i)
    if (text[i] == '\n') ++line, line_start = i + 1;
  return {line, offset - line_start + 1};
}
}  // namespace

size_t json_depth_exceeded(std::string_view text, int max_depth) {
  int depth = 0;
  bool in_string = false, escaped = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (escaped) escaped = false;
      else if (c == '\\') escaped = true;
      else if (c == '"') in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > max_depth) return i;
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return std::string_view::npos;
}

nlohmann::json parse_json(std::string_view text, const std::string& what) {
  if (const size_t at = json_depth_exceeded(text, limits::kMaxJsonDepth); at != std::string_view::npos) {
    const auto [line, column] = line_and_column(text, at);
    fail("{}:{}:{}: malformed JSON: nested deeper than {} levels", what, line, column, limits::kMaxJsonDepth);
  }
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    // parse_error: e.byte is the 1-based offset of the last character read, the one the parser stopped at.
    // out_of_range (a number such as 1e400 that no double holds) carries no position.
    size_t offset = 0;
    if (const auto* parse_error = dynamic_cast<const nlohmann::json::parse_error*>(&e))
      offset = parse_error->byte > 0 ? parse_error->byte - 1 : 0;
    const auto [line, column] = line_and_column(text, offset);
    // what(): "[json.exception.parse_error.101] parse error at line 3, column 8: <what went wrong>".
    std::string message = e.what();
    const size_t at = message.find("parse error at line ");
    const size_t colon = at == std::string::npos ? std::string::npos : message.find(": ", at);
    if (colon != std::string::npos) {
      message = message.substr(colon + 2);
    } else if (const size_t bracket = message.find("] "); bracket != std::string::npos) {
      message = message.substr(bracket + 2);
    }
    if (dynamic_cast<const nlohmann::json::parse_error*>(&e)) fail("{}:{}:{}: malformed JSON: {}", what, line, column, message);
    fail("{}: malformed JSON: {}", what, message);
  }
}

}  // namespace l3c
