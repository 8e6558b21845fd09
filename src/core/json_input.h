// Parsing JSON that comes from outside (config files, trainer.json, safetensors headers, tokenizer files, JSONL
// lines, --set values): nesting deeper than limits::kMaxJsonDepth is refused before parsing (nlohmann::json
// parses iteratively, but copying, comparing and printing a value recurse, so a deep value would overflow the
// stack later), and every parse failure, including a number too large for a double (1e400), is a UserError
// naming `what` with line and column.
#pragma once
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

namespace l3c {

// UserError "WHAT:LINE:COLUMN: malformed JSON: ..." or "... nested deeper than N levels".
nlohmann::json parse_json(std::string_view text, const std::string& what);

// The first position where `text` nests deeper than `max_depth` arrays and objects (strings skipped), or
// std::string_view::npos.
size_t json_depth_exceeded(std::string_view text, int max_depth);

}  // namespace l3c
