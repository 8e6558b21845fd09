// Text inputs: expansion of files and folders, normalisation and UTF-8 checks, the document reader
// and the checksum/count pre-pass.
#include "data/text_source.h"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/errors.h"
#include "core/json_input.h"
#include "core/limits.h"
#include "core/sha256.h"

namespace l3c {

namespace fs = std::filesystem;

namespace {

bool is_jsonl(const fs::path& path) { return path.extension() == ".jsonl"; }

bool hidden(const fs::path& path) {
  const std::string name = path.filename().string();
  return !name.empty() && name[0] == '.';
}

TextInput make_input(const fs::path& path) {
  std::error_code ec;
  const uint64_t bytes = fs::file_size(path, ec);
  if (ec) fail("{}: cannot read: {}", path.string(), ec.message());
  if (bytes == 0) fail("{}: empty file (every input must hold text)", path.string());
  return {path.string(), is_jsonl(path), bytes};
}

// The length of the valid UTF-8 sequence at p (1-4), or 0 when it is invalid, with *bad set to the
// length of its maximal valid prefix (at least 1): the bytes that one U+FFFD replaces (Unicode 3.9,
// "substitution of maximal subparts", as Python's and the WHATWG decoders do).
size_t utf8_sequence(const unsigned char* p, size_t available, size_t* bad) {
  const unsigned char c = p[0];
  *bad = 1;
  if (c < 0x80) return 1;
  size_t length = 0;
  unsigned char low = 0x80, high = 0xBF;  // range of the second byte
  if (c >= 0xC2 && c <= 0xDF) {
    length = 2;
  } else if (c >= 0xE0 && c <= 0xEF) {
    length = 3;
    if (c == 0xE0) low = 0xA0;   // no overlong forms
    if (c == 0xED) high = 0x9F;  // no surrogates
  } else if (c >= 0xF0 && c <= 0xF4) {
    length = 4;
    if (c == 0xF0) low = 0x90;   // no overlong forms
    if (c == 0xF4) high = 0x8F;  // nothing above U+10FFFF
  } else {
    return 0;  // a continuation byte, C0/C1 or F5..FF: never valid here
  }
  for (size_t k = 1; k < length; ++k) {
    if (k >= available) return 0;
    const unsigned char lo = k == 1 ? low : 0x80, hi = k == 1 ? high : 0xBF;
    if (p[k] < lo || p[k] > hi) return 0;
    *bad = k + 1;
  }
  return length;
}

std::string hex_bytes(std::string_view raw, size_t at, size_t count) {
  std::string out;
  for (size_t k = at; k < std::min(raw.size(), at + count); ++k)
    out += fmt::format("{}{:02X}", out.empty() ? "" : " ", static_cast<unsigned char>(raw[k]));
  return out;
}

}  // namespace

std::vector<TextInput> expand_text_inputs(const std::vector<std::string>& inputs) {
  std::vector<TextInput> files;
  for (const std::string& input : inputs) {
    std::error_code ec;
    if (fs::is_directory(input, ec)) {
      std::vector<fs::path> inside;
      auto it = fs::recursive_directory_iterator(input, fs::directory_options::skip_permission_denied, ec);
      if (ec) fail("{}: cannot list the folder: {}", input, ec.message());
      for (; it != fs::recursive_directory_iterator(); it.increment(ec)) {
        if (ec) fail("{}: cannot list the folder: {}", input, ec.message());
        if (hidden(it->path())) {
          if (it->is_directory()) it.disable_recursion_pending();
          continue;
        }
        if (it->is_regular_file()) inside.push_back(it->path());
      }
      std::sort(inside.begin(), inside.end());
      if (inside.empty()) fail("{}: the folder holds no files", input);
      for (const fs::path& path : inside) files.push_back(make_input(path));
    } else if (fs::is_regular_file(input, ec)) {
      files.push_back(make_input(input));
    } else if (fs::exists(input, ec)) {
      // A device, FIFO or socket: prepare reads each input twice (checksums, then tokens), which only files allow.
      const fs::file_type type = fs::status(input, ec).type();
      const char* kind = type == fs::file_type::character ? "a character device"
                         : type == fs::file_type::block   ? "a block device"
                         : type == fs::file_type::fifo    ? "a FIFO (named pipe)"
                         : type == fs::file_type::socket  ? "a socket"
                                                          : "not a regular file";
      fail("{}: {}, not a file or folder; prepare reads each input twice, so it needs files (save the text to a "
           "file first)", input, kind);
    } else {
      fail("{}: no such file or folder", input);
    }
  }
  if (files.empty()) fail("no input files");
  return files;
}

std::string normalize_text(std::string_view raw, const std::string& where, uint64_t base_offset, InvalidUtf8 mode,
                           bool strip_bom) {
  size_t i = 0;
  if (strip_bom && raw.substr(0, 3) == "\xEF\xBB\xBF") i = 3;
  // A NUL byte marks binary data, whatever comes before it (which is often invalid UTF-8 too).
  if (const void* nul = std::memchr(raw.data(), 0, raw.size()); nul != nullptr)
    fail("{}: binary data (a NUL byte at byte offset {}); only UTF-8 text can be prepared", where,
         base_offset + static_cast<uint64_t>(static_cast<const char*>(nul) - raw.data()));
  std::string out;
  out.reserve(raw.size() - i);
  const auto* p = reinterpret_cast<const unsigned char*>(raw.data());
  const size_t n = raw.size();
  while (i < n) {
    // ASCII runs are copied in one go; a CR before an LF is dropped.
    size_t run = i;
    while (run < n && p[run] < 0x80 && p[run] != '\r') ++run;
    out.append(raw.data() + i, run - i);
    i = run;
    if (i == n) break;
    if (p[i] == '\r') {
      if (i + 1 >= n || p[i + 1] != '\n') out.push_back('\r');
      ++i;
      continue;
    }
    size_t bad = 0;
    const size_t length = utf8_sequence(p + i, n - i, &bad);
    if (length > 0) {
      out.append(raw.data() + i, length);
      i += length;
      continue;
    }
    if (mode == InvalidUtf8::Error)
      fail("{}: invalid UTF-8 at byte offset {} (bytes {}); pass --invalid-utf8 replace to replace invalid bytes "
           "with U+FFFD",
           where, base_offset + i, hex_bytes(raw, i, 4));
    out += "\xEF\xBF\xBD";
    i += bad;
  }
  return out;
}

DocumentReader::DocumentReader(std::vector<TextInput> inputs, std::string field, InvalidUtf8 mode)
    : inputs_(std::move(inputs)), field_(std::move(field)), mode_(mode) {}

DocumentReader::~DocumentReader() {
  close_file();
  std::free(line_buffer_);
}

void DocumentReader::close_file() {
  if (file_ != nullptr) std::fclose(file_);
  file_ = nullptr;
}

bool DocumentReader::next(Document& doc) {
  while (current_ < inputs_.size()) {
    const TextInput& input = inputs_[current_];
    if (input.jsonl) {
      if (next_jsonl_line(doc)) return true;
      if (documents_in_file_ == 0) fail("{}: no documents (every line is blank)", input.path);
    } else {
      FILE* f = std::fopen(input.path.c_str(), "rb");
      if (f == nullptr) fail("{}: cannot read: {}", input.path, std::strerror(errno));
      std::string raw(input.bytes, '\0');
      const size_t got = std::fread(raw.data(), 1, raw.size(), f);
      std::fclose(f);
      if (got != raw.size()) fail("{}: read {} of {} bytes (did the file change?)", input.path, got, raw.size());
      doc.text = normalize_text(raw, input.path, 0, mode_);
      if (doc.text.empty()) fail("{}: empty file (only a byte-order mark)", input.path);
      doc.index = next_index_++;
      doc.input = current_;
      doc.line = 0;
    }
    bytes_done_ += input.bytes;
    offset_in_file_ = 0;
    ++current_;
    if (!input.jsonl) return true;
  }
  return false;
}

// The next non-blank line of the current JSONL file as a document; false at the end of the file (which
// is then closed, ready for the next input).
bool DocumentReader::next_jsonl_line(Document& doc) {
  const TextInput& input = inputs_[current_];
  if (file_ == nullptr) {
    file_ = std::fopen(input.path.c_str(), "rb");
    if (file_ == nullptr) fail("{}: cannot read: {}", input.path, std::strerror(errno));
    line_number_ = 0;
    documents_in_file_ = 0;
    offset_in_file_ = 0;
  }
  while (true) {
    const ssize_t got = ::getline(&line_buffer_, &line_capacity_, file_);
    if (got < 0) {
      const bool error = std::ferror(file_) != 0;
      close_file();
      if (error) fail("{}: read error after line {}", input.path, line_number_);
      return false;
    }
    ++line_number_;
    const uint64_t line_offset = offset_in_file_;
    offset_in_file_ += static_cast<uint64_t>(got);
    std::string_view raw(line_buffer_, static_cast<size_t>(got));
    const std::string where = fmt::format("{}:{}", input.path, line_number_);
    const std::string line = normalize_text(raw, where, line_offset, mode_, /*strip_bom=*/line_number_ == 1);
    if (line.find_first_not_of(" \t\n\r") == std::string::npos) continue;  // blank lines are no documents

    nlohmann::json j;
    if (json_depth_exceeded(line, limits::kMaxJsonDepth) != std::string::npos)
      fail("{}: JSON nested deeper than {} levels; a .jsonl file holds one JSON object per line", where,
           limits::kMaxJsonDepth);
    try {
      j = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception& e) {  // parse_error, or out_of_range for a number such as 1e400
      std::string what = e.what();
      if (const size_t colon = what.find("]: "); colon != std::string::npos) what = what.substr(colon + 3);
      else if (const size_t bracket = what.find("] "); bracket != std::string::npos) what = what.substr(bracket + 2);
      fail("{}: not a JSON object ({}); a .jsonl file holds one JSON object per line", where, what);
    }
    if (!j.is_object()) fail("{}: expected a JSON object with a \"{}\" field, got a {}", where, field_, j.type_name());
    const auto value = j.find(field_);
    if (value == j.end()) {
      std::string keys;
      for (const auto& item : j.items()) keys += (keys.empty() ? "" : ", ") + item.key();
      fail("{}: no \"{}\" field (the object has: {}); choose the text field with --field NAME", where, field_,
           keys.empty() ? "no fields" : keys);
    }
    if (!value->is_string())
      fail("{}: field \"{}\" must be a string, got a {}", where, field_, value->type_name());
    // The decoded string is valid UTF-8 (the parser checks); escapes may still hold CRLF or NUL.
    doc.text = normalize_text(value->get_ref<const std::string&>(), fmt::format("{}: field \"{}\"", where, field_), 0,
                              mode_);
    doc.index = next_index_++;
    doc.input = current_;
    doc.line = line_number_;
    ++documents_in_file_;
    return true;
  }
}

InputScan scan_inputs(const std::vector<TextInput>& inputs, int threads) {
  InputScan scan;
  scan.sha256.resize(inputs.size());
  std::vector<int64_t> documents(inputs.size(), 0);
  std::vector<std::string> errors(inputs.size());
  const int64_t n = static_cast<int64_t>(inputs.size());
#pragma omp parallel for schedule(dynamic, 1) num_threads(std::max(threads, 1))
  for (int64_t k = 0; k < n; ++k) {
    const TextInput& input = inputs[k];
    FILE* f = std::fopen(input.path.c_str(), "rb");
    if (f == nullptr) {
      errors[k] = fmt::format("{}: cannot read: {}", input.path, std::strerror(errno));
      continue;
    }
    Sha256 hash;
    std::vector<char> buffer(1 << 20);
    bool blank = true;  // the current line has no non-space byte yet
    int64_t lines = 0;
    size_t got;
    while ((got = std::fread(buffer.data(), 1, buffer.size(), f)) > 0) {
      hash.update(buffer.data(), got);
      if (!input.jsonl) continue;
      for (size_t i = 0; i < got; ++i) {
        const char c = buffer[i];
        if (c == '\n') {
          lines += blank ? 0 : 1;
          blank = true;
        } else if (c != ' ' && c != '\t' && c != '\r') {
          blank = false;
        }
      }
    }
    if (std::ferror(f) != 0) errors[k] = fmt::format("{}: read error", input.path);
    std::fclose(f);
    scan.sha256[k] = hash.hex_digest();
    documents[k] = input.jsonl ? lines + (blank ? 0 : 1) : 1;
  }
  for (const std::string& error : errors)
    if (!error.empty()) throw UserError(error);
  for (int64_t d : documents) scan.documents += d;
  return scan;
}

}  // namespace l3c
