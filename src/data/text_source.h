// Text inputs for `l3c prepare`, read as a stream of documents.
// An input is a text file (one document), a `.jsonl` file (one document per non-blank line: the string
// field `field` of a JSON object) or a folder (its files, recursively, sorted by path; names starting
// with '.' are skipped). Every document is normalised the same way: a leading UTF-8 byte-order mark is
// stripped, CRLF becomes LF, and the bytes must be UTF-8 (or invalid sequences are replaced by U+FFFD,
// when asked). Bad input is a UserError naming the file and the line or byte offset: an empty file, a
// binary file (a NUL byte), invalid UTF-8, a JSONL line that is not a JSON object or lacks the field.
#pragma once
#include <cstdint>
#include <cstdio>
#include <string>
#include <string_view>
#include <vector>

#include "core/choice.h"

namespace l3c {

enum class InvalidUtf8 : uint8_t { Error, Replace };
template <> struct ChoiceNames<InvalidUtf8> {  // prepare's --invalid-utf8, the manifest's "invalid_utf8"
  static constexpr std::array<std::string_view, 2> names = {"error", "replace"};
};

struct TextInput {
  std::string path;
  bool jsonl = false;   // one document per line
  uint64_t bytes = 0;   // file size
};

// The files the command-line inputs name, in order (folders expanded recursively, sorted).
// UserError when an input does not exist or a folder holds no files.
std::vector<TextInput> expand_text_inputs(const std::vector<std::string>& inputs);

// The normalised text of raw document bytes: BOM stripped (when `strip_bom`), CRLF -> LF, UTF-8 checked.
// Errors name `where` and the offset `base_offset + i` of the bad byte i in `raw`.
std::string normalize_text(std::string_view raw, const std::string& where, uint64_t base_offset, InvalidUtf8 mode,
                           bool strip_bom = true);

struct Document {
  std::string text;        // normalised; may be empty (an empty JSONL field)
  int64_t index = 0;       // position in the stream of documents, from 0
  size_t input = 0;        // which TextInput it came from
  int64_t line = 0;        // 1-based line of a JSONL document; 0 for a text file
};

// Reads the documents of the inputs in order, one at a time (a JSONL file is streamed line by line, so
// inputs of any size fit in memory).
class DocumentReader {
 public:
  DocumentReader(std::vector<TextInput> inputs, std::string field, InvalidUtf8 mode);
  ~DocumentReader();
  DocumentReader(const DocumentReader&) = delete;
  DocumentReader& operator=(const DocumentReader&) = delete;

  // The next document; false after the last one.
  bool next(Document& doc);
  // Raw input bytes consumed so far (for progress reports).
  uint64_t bytes_read() const { return bytes_done_ + offset_in_file_; }
  const std::vector<TextInput>& inputs() const { return inputs_; }

 private:
  bool next_jsonl_line(Document& doc);
  void close_file();

  std::vector<TextInput> inputs_;
  std::string field_;
  InvalidUtf8 mode_;
  size_t current_ = 0;            // input being read
  FILE* file_ = nullptr;          // open JSONL file
  char* line_buffer_ = nullptr;   // getline's buffer
  size_t line_capacity_ = 0;
  int64_t line_number_ = 0;
  int64_t documents_in_file_ = 0;
  uint64_t offset_in_file_ = 0;   // bytes of the current file consumed
  uint64_t bytes_done_ = 0;       // bytes of the finished files
  int64_t next_index_ = 0;
};

// How many documents `inputs` hold (files, plus non-blank lines of JSONL files), with each file's
// sha256 computed in the same pass: one read of everything, before the real work.
struct InputScan {
  std::vector<std::string> sha256;  // one per input
  int64_t documents = 0;
};
InputScan scan_inputs(const std::vector<TextInput>& inputs, int threads);

}  // namespace l3c
