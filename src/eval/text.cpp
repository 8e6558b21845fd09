// Held-out text evaluation (see text.h).
#include "eval/text.h"

#include <chrono>
#include <cmath>

#include "core/errors.h"
#include "core/sha256.h"
#include "data/text_source.h"

namespace l3c {

double TextResult::loss() const { return tokens > 0 ? nll / static_cast<double>(tokens) : 0.0; }
double TextResult::perplexity() const { return std::exp(loss()); }
double TextResult::bits_per_byte() const { return bytes > 0 ? nll / std::log(2.0) / static_cast<double>(bytes) : 0.0; }

nlohmann::ordered_json TextResult::to_json() const {
  nlohmann::ordered_json files_json = nlohmann::ordered_json::array();
  for (const TextFileResult& f : files) {
    const double loss = f.tokens > 0 ? f.nll / static_cast<double>(f.tokens) : 0.0;
    files_json.push_back({{"path", f.path}, {"sha256", f.sha256}, {"documents", f.documents}, {"tokens", f.tokens},
                          {"bytes", f.bytes}, {"loss", loss}, {"ppl", std::exp(loss)},
                          {"bits_per_byte", f.bytes > 0 ? f.nll / std::log(2.0) / static_cast<double>(f.bytes) : 0.0}});
  }
  return {{"loss", loss()},     {"ppl", perplexity()}, {"bits_per_byte", bits_per_byte()},
          {"tokens", tokens},   {"bytes", bytes},      {"windows", windows},
          {"stride", stride},   {"seq_len", seq_len},  {"seconds", seconds},
          {"tokens_per_second", seconds > 0 ? static_cast<double>(tokens) / seconds : 0.0}, {"files", files_json}};
}

std::vector<ScoreRequest> text_windows(const std::vector<int32_t>& ids, int64_t seq_len, int64_t stride) {
  std::vector<ScoreRequest> windows;
  const int64_t L = static_cast<int64_t>(ids.size());
  int64_t scored_end = 1;  // tokens [1, scored_end) are scored
  while (scored_end < L) {
    const int64_t end = scored_end == 1 ? std::min(L, seq_len + 1) : std::min(L, scored_end + stride);
    const int64_t begin = std::max<int64_t>(0, end - (seq_len + 1));
    ScoreRequest r;
    r.tokens.assign(ids.begin() + begin, ids.begin() + end);
    r.first_scored = scored_end - begin;
    windows.push_back(std::move(r));
    scored_end = end;
  }
  return windows;
}

namespace {
// The length of the longest prefix of UTF-8 text `text` of at most n bytes that ends at a character boundary.
size_t utf8_prefix(const std::string& text, size_t n) {
  if (n >= text.size()) return text.size();
  while (n > 0 && (static_cast<unsigned char>(text[n]) & 0xC0) == 0x80) --n;
  return n;
}
}  // namespace

TextCorpus read_text_corpus(const std::vector<std::string>& inputs, const Tokenizer& tokenizer, int64_t vocab_size,
                            int64_t max_bytes) {
  if (inputs.empty()) fail("--text: no input files");
  const std::vector<TextInput> files = expand_text_inputs(inputs);
  TextCorpus corpus;
  for (const TextInput& f : files) {
    corpus.paths.push_back(f.path);
    corpus.sha256.push_back(sha256_file(f.path));
  }
  const std::optional<uint32_t> eot = tokenizer.eot_id();
  DocumentReader reader(files, "text", InvalidUtf8::Error);
  Document doc;
  while (reader.next(doc)) {
    if (max_bytes > 0) doc.text.resize(utf8_prefix(doc.text, static_cast<size_t>(max_bytes)));
    TextDocument d;
    d.input = doc.input;
    if (eot) d.ids.push_back(static_cast<int32_t>(*eot));
    for (uint32_t id : tokenizer.encode(doc.text)) {
      if (static_cast<int64_t>(id) >= vocab_size)
        fail("{}: token id {} is outside the model's vocabulary of {} (not the run's tokenizer?)",
             files[doc.input].path, id, vocab_size);
      d.ids.push_back(static_cast<int32_t>(id));
    }
    d.scored_bytes = static_cast<int64_t>(doc.text.size());
    if (!eot && !d.ids.empty()) {  // the first token is context only
      const uint32_t first = static_cast<uint32_t>(d.ids.front());
      d.scored_bytes -= static_cast<int64_t>(tokenizer.decode(std::span<const uint32_t>(&first, 1)).size());
    }
    corpus.documents.push_back(std::move(d));
  }
  return corpus;
}

TextResult evaluate_text(Scorer& scorer, const TextCorpus& corpus, const TextOptions& options) {
  const auto start = std::chrono::steady_clock::now();
  TextResult result;
  result.seq_len = options.seq_len;
  result.stride = options.stride > 0 ? options.stride : options.seq_len;
  if (result.stride > result.seq_len) fail("--stride: must be at most data.seq_len = {}, got {}", result.seq_len, result.stride);
  for (size_t k = 0; k < corpus.paths.size(); ++k) result.files.push_back({corpus.paths[k], corpus.sha256[k]});
  // Every window of every document in one list, so that batches fill up across documents.
  std::vector<ScoreRequest> requests;
  std::vector<size_t> file_of;
  for (const TextDocument& d : corpus.documents) {
    TextFileResult& f = result.files[d.input];
    ++f.documents;
    f.bytes += d.scored_bytes;
    for (ScoreRequest& w : text_windows(d.ids, result.seq_len, result.stride)) {
      requests.push_back(std::move(w));
      file_of.push_back(d.input);
    }
  }
  EvalProgress progress("text", "windows", options.progress);
  const std::vector<SequenceScore> scores = scorer.score(requests, progress.fn());
  for (size_t i = 0; i < scores.size(); ++i) {
    TextFileResult& f = result.files[file_of[i]];
    f.nll -= scores[i].log_prob;
    f.tokens += scores[i].tokens;
    ++f.windows;
  }
  for (const TextFileResult& f : result.files) {
    result.nll += f.nll;
    result.tokens += f.tokens;
    result.bytes += f.bytes;
    result.windows += f.windows;
  }
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return result;
}

}  // namespace l3c
