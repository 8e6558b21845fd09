// Tests of the byte-level BPE tokenizer and trainer: GPT-2 ids identical to tiktoken / Hugging Face tokenizers
// on samples of every file in ../shared/data (tests/golden/gpt2_tokenizer_ids.json, made by
// scripts/tokenizer_golden.py), GPT-2's pre-tokenisation rules, decode(encode(x)) == x for arbitrary bytes,
// parallel == serial encoding, training (deterministic, equal to a naive recount-every-merge trainer), the
// trained files loading back here and in the reference tokenizers, the `l3c tokenizer` command, and one clear
// error for each kind of bad tokenizer file.
#include <catch2/catch.hpp>

#include "test_util.h"

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <random>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

#include "core/errors.h"
#include "data/bpe_tokenizer.h"
#include "data/bpe_trainer.h"
#include "data/tokenizer.h"

using Catch::Matchers::Contains;
namespace fs = std::filesystem;

namespace {
using l3c::test::fresh_dir;
using l3c::test::user_error;
using l3c::test::write_text;

const std::string kShared = std::string(L3C_SOURCE_DIR) + "/../shared";
const std::string kGpt2 = kShared + "/data/gpt2";

const l3c::BpeTokenizer& gpt2() {
  static const std::unique_ptr<l3c::BpeTokenizer> tokenizer = l3c::BpeTokenizer::load(kGpt2);
  return *tokenizer;
}

using Result = l3c::test::CommandResult;

Result run(const std::string& command) { return l3c::test::run_command(command); }

std::vector<std::string> pretokens(std::string_view text) {
  std::vector<std::string> pieces;
  l3c::for_each_pretoken(text, [&](std::string_view piece) { pieces.emplace_back(piece); });
  return pieces;
}

// A few hundred KB of English text: the first bytes of Tiny Shakespeare.
std::string shakespeare(size_t bytes) {
  std::string text = l3c::test::read_text(kShared + "/data/tinyshakespeare/input.txt");
  REQUIRE(text.size() >= bytes);
  return text.substr(0, bytes);
}

// The naive trainer: recount every pair after every merge; same tie-breaking as train(): highest count,
// then smaller left id, then smaller right id; a pair whose bytes are already a token is never merged.
std::vector<std::pair<uint32_t, uint32_t>> naive_merges(const std::string& text, int64_t vocab_size) {
  std::map<std::string, int64_t> counts;
  l3c::for_each_pretoken(l3c::normalise_newlines(text), [&](std::string_view p) { ++counts[std::string(p)]; });
  const auto& order = l3c::gpt2_byte_order();
  std::vector<std::string> tokens;
  std::array<uint32_t, 256> byte_id{};
  for (uint32_t id = 0; id < 256; ++id) byte_id[order[id]] = id, tokens.emplace_back(1, static_cast<char>(order[id]));
  std::vector<std::pair<std::vector<uint32_t>, int64_t>> words;
  for (const auto& [w, c] : counts) {
    std::vector<uint32_t> s;
    for (unsigned char ch : w) s.push_back(byte_id[ch]);
    words.emplace_back(s, c);
  }
  std::vector<std::pair<uint32_t, uint32_t>> merges;
  while (static_cast<int64_t>(tokens.size()) < vocab_size - 1) {
    std::map<std::pair<uint32_t, uint32_t>, int64_t> pairs;
    for (const auto& [s, c] : words)
      for (size_t i = 0; i + 1 < s.size(); ++i) pairs[{s[i], s[i + 1]}] += c;
    std::pair<uint32_t, uint32_t> best{};
    int64_t best_count = 0;
    for (const auto& [p, c] : pairs) {  // map order: ties keep the smaller (left, right)
      const std::string bytes = tokens[p.first] + tokens[p.second];
      if (c > best_count && bytes != "<|endoftext|>" && std::find(tokens.begin(), tokens.end(), bytes) == tokens.end())
        best = p, best_count = c;
    }
    if (best_count == 0) break;
    const auto made = static_cast<uint32_t>(tokens.size());
    tokens.push_back(tokens[best.first] + tokens[best.second]);
    merges.push_back(best);
    for (auto& [s, c] : words) {
      std::vector<uint32_t> out;
      for (size_t i = 0; i < s.size(); ++i) {
        if (i + 1 < s.size() && s[i] == best.first && s[i + 1] == best.second) out.push_back(made), ++i;
        else out.push_back(s[i]);
      }
      s = out;
    }
  }
  return merges;
}

}  // namespace

TEST_CASE("GPT-2 ids equal tiktoken's and tokenizers' on samples of every data file", "[tokenizer]") {
  const nlohmann::json golden =
      nlohmann::json::parse(l3c::test::read_text(std::string(L3C_SOURCE_DIR) + "/tests/golden/gpt2_tokenizer_ids.json"));
  const l3c::BpeTokenizer& tok = gpt2();
  CHECK(tok.vocab_size() == 50257);
  CHECK(tok.eot_id() == std::optional<uint32_t>(50256));
  CHECK(tok.merge_count() == 50000);
  size_t samples = 0, mismatches = 0;
  std::set<std::string> sources;
  for (const auto& sample : golden.at("samples")) {
    const std::string text = sample.at("text").get<std::string>();
    const std::vector<uint32_t> expected = sample.at("ids").get<std::vector<uint32_t>>();
    const std::vector<uint32_t> ids = tok.encode(text);
    ++samples;
    sources.insert(sample.at("source").get<std::string>());
    if (ids != expected) {
      ++mismatches;
      INFO(sample.at("source").dump() << " " << sample.dump().substr(0, 300));
      CHECK(ids == expected);
    }
    if (tok.decode(ids) != text) {
      ++mismatches;
      CHECK(tok.decode(ids) == text);
    }
  }
  CHECK(mismatches == 0);
  CHECK(samples > 400);
  // Every file of ../shared/data: tinyshakespeare + 97 novels + 23 held-out + 7 evals, and the edge strings.
  CHECK(sources.size() == 1 + 97 + 23 + 7 + 1);
}

TEST_CASE("pre-tokens follow GPT-2's pattern", "[tokenizer]") {
  using V = std::vector<std::string>;
  CHECK(pretokens("Hello world") == V{"Hello", " world"});
  CHECK(pretokens("a  b") == V{"a", " ", " b"});
  CHECK(pretokens("a\n\nb") == V{"a", "\n", "\n", "b"});
  CHECK(pretokens("x   ") == V{"x", "   "});
  CHECK(pretokens("x\n  y") == V{"x", "\n ", " y"});
  CHECK(pretokens("\t\tx") == V{"\t", "\t", "x"});
  CHECK(pretokens("end.  ") == V{"end", ".", "  "});
  CHECK(pretokens("don't") == V{"don", "'t"});
  CHECK(pretokens("I'll") == V{"I", "'ll"});
  CHECK(pretokens(" 's") == V{" '", "s"});
  CHECK(pretokens("'S") == V{"'", "S"});  // contractions are case-sensitive
  CHECK(pretokens("12abc") == V{"12", "abc"});
  CHECK(pretokens(" 42  x") == V{" 42", " ", " x"});
  CHECK(pretokens("a\u00a0b") == V{"a", "\u00a0", "b"});          // NBSP is white space, not ' '
  CHECK(pretokens("a \u00a0b") == V{"a", " ", "\u00a0", "b"});
  CHECK(pretokens("\u00e9\u65e5\u672c \u8a9e!?") == V{"\u00e9\u65e5\u672c", " \u8a9e", "!?"});
  CHECK(pretokens("a\x1c b") == V{"a", "\x1c", " b"});            // U+001C is not White_Space
  CHECK(pretokens("\xff\xfe ab") == V{"\xff\xfe", " ab"});         // invalid UTF-8: "other" characters
  CHECK(pretokens("") == V{});
}

TEST_CASE("decode(encode(x)) == x for arbitrary bytes including invalid UTF-8", "[tokenizer]") {
  const l3c::BpeTokenizer& tok = gpt2();
  std::mt19937_64 rng(7);
  const std::vector<std::string> fragments = {" ", "  ", "\n", "\r\n", "'s", "'ll", "the", " and", "\xc3\xa9",
                                              "\xe6\x97\xa5", "\xf0\x9f\x99\x82", "\xc3", "\xe6\x97", "\xed\xa0\x80",
                                              "\xc0\xaf", "\xf4\x90\x80\x80", "123", "\xc2\xa0", "\t", "===="};
  for (int trial = 0; trial < 3000; ++trial) {
    std::string text;
    const int length = static_cast<int>(rng() % 200);
    for (int i = 0; i < length; ++i) {
      if (trial % 2 == 0) text.push_back(static_cast<char>(rng() & 0xFF));  // uniform bytes
      else text += fragments[rng() % fragments.size()];                     // UTF-8 pieces, broken ones too
    }
    const std::vector<uint32_t> ids = tok.encode(text);
    INFO("trial " << trial);
    REQUIRE(tok.decode(ids) == text);
    for (uint32_t id : ids) REQUIRE(id < 50256);  // "<|endoftext|>" in text is text, never the eot id
  }
  const std::vector<uint32_t> eot_text = tok.encode("<|endoftext|>");
  CHECK(eot_text.size() > 1);
  CHECK(tok.decode(std::vector<uint32_t>{50256}) == "<|endoftext|>");
  // Long pre-tokens take the heap-based merge path.
  for (const std::string& text : {std::string(5000, ' '), std::string(3000, '='), std::string(2000, 'a') + "!"})
    CHECK(tok.decode(tok.encode(text)) == text);
}

TEST_CASE("parallel encoding equals serial encoding and safe cuts are pre-token boundaries", "[tokenizer]") {
  const l3c::BpeTokenizer& tok = gpt2();
  std::string text = shakespeare(1000000);  // > 512 KB: encode_parallel cuts it
  std::mt19937_64 rng(3);
  for (int i = 0; i < 2000; ++i) {  // sprinkle white space runs, CRLF, non-ASCII and invalid bytes
    const size_t at = rng() % text.size();
    const char* inserts[] = {"\n  \n", "\r\n", "\xc3\xa9", "\xff", "\n\n\n", " \xc2\xa0\n", "\n'"};
    text.insert(at, inserts[rng() % 7]);
  }
  const std::vector<uint32_t> serial = tok.encode(text);
  for (int threads : {2, 3, 7}) CHECK((tok.encode_parallel(text, threads) == serial));  // (): no 250K-id dump

  // Pre-tokenising the parts between safe cuts gives the pre-tokens of the whole.
  const std::vector<std::string> whole = pretokens(text);
  std::vector<std::string> joined;
  size_t cuts = 0, start = 0;
  while (start < text.size()) {
    const size_t cut = l3c::next_safe_cut(text, start + 1);
    const std::vector<std::string> part = pretokens(std::string_view(text).substr(start, cut - start));
    joined.insert(joined.end(), part.begin(), part.end());
    start = cut;
    ++cuts;
  }
  CHECK(joined.size() == whole.size());
  CHECK((joined == whole));
  CHECK(cuts > 1000);
}

TEST_CASE("training is deterministic and equals a naive trainer that recounts every pair", "[tokenizer][train]") {
  // CRLF and a BOM are normalised away before counting.
  const std::string text = "\xEF\xBB\xBF" + shakespeare(60000) + "\r\nIt's 1603; caf\xc3\xa9 \xc3\xa9t\xc3\xa9.\r\n";
  const fs::path dir = fresh_dir("train");
  write_text(dir / "corpus.txt", text);
  l3c::BpeTrainStats stats;
  const l3c::BpeVocabulary a = l3c::train_bpe({(dir / "corpus.txt").string()}, 600, 2, &stats);
  const l3c::BpeVocabulary b = l3c::train_bpe({(dir / "corpus.txt").string()}, 600, 1);
  CHECK(a.merges == b.merges);
  CHECK(a.tokens == b.tokens);
  CHECK(a.tokens.size() == 600);
  CHECK(a.tokens.back() == "<|endoftext|>");
  CHECK(stats.merges == 600 - 257);
  CHECK(stats.documents == 1);
  CHECK(a.merges == naive_merges(text, 600));
  for (size_t r = 0; r < a.merges.size(); ++r)  // merge r makes id 256 + r
    REQUIRE(a.tokens[256 + r] == a.tokens[a.merges[r].first] + a.tokens[a.merges[r].second]);

  // The same input gives the same files, byte for byte.
  l3c::write_bpe_files((dir / "one").string(), a);
  l3c::write_bpe_files((dir / "two").string(), b);
  CHECK(l3c::test::read_text(dir / "one" / "encoder.json") == l3c::test::read_text(dir / "two" / "encoder.json"));
  CHECK(l3c::test::read_text(dir / "one" / "vocab.bpe") == l3c::test::read_text(dir / "two" / "vocab.bpe"));
  CHECK(l3c::test::read_text(dir / "one" / "vocab.bpe").starts_with("#version: 0.2\n"));
  fs::remove_all(dir);
}

TEST_CASE("trained files load back and round-trip and tiktoken and tokenizers give our ids with them",
          "[tokenizer][train]") {
  const fs::path dir = fresh_dir("reference");
  const std::string corpus = shakespeare(300000);
  write_text(dir / "corpus.txt", corpus);
  const l3c::BpeVocabulary vocabulary = l3c::train_bpe({(dir / "corpus.txt").string()}, 1000, 2);
  l3c::write_bpe_files((dir / "tok").string(), vocabulary);

  const std::unique_ptr<l3c::Tokenizer> loaded = l3c::load_tokenizer((dir / "tok").string());
  CHECK(loaded->vocab_size() == 1000);
  CHECK(loaded->eot_id() == std::optional<uint32_t>(999));
  CHECK(loaded->checksum().size() == 64);
  CHECK(loaded->description() == (dir / "tok").string());
  const std::vector<uint32_t> ids = loaded->encode(corpus);
  CHECK(loaded->decode(ids) == corpus);
  CHECK(ids.size() < corpus.size() / 2);  // it compresses the text it was trained on

  // Held-out text with non-ASCII characters, digits and white-space runs (not the training text).
  const std::string probe = "It's 1603, and caf\xc3\xa9 na\xc3\xafve \xe6\x97\xa5\xe6\x9c\xac   words\n\n\n  they'll say:"
                            " \xe2\x80\x9cO Romeo!\xe2\x80\x9d\t\xc2\xa0" "end";
  write_text(dir / "probe.txt", probe + "\n" + corpus.substr(0, 20000));
  const std::vector<uint32_t> ours = loaded->encode(probe + "\n" + corpus.substr(0, 20000));
  const std::string script = R"(import json, sys, tiktoken
from tiktoken.load import data_gym_to_mergeable_bpe_ranks
from tokenizers import Tokenizer, models, pre_tokenizers
d, path = sys.argv[1], sys.argv[2]
pattern = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
ranks = data_gym_to_mergeable_bpe_ranks(d + "/vocab.bpe", d + "/encoder.json")
tt = tiktoken.Encoding(name="t", pat_str=pattern, mergeable_ranks=ranks, special_tokens={"<|endoftext|>": 999})
hf = Tokenizer(models.BPE.from_file(d + "/encoder.json", d + "/vocab.bpe"))
hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
text = open(path, encoding="utf-8", newline="").read()
print(json.dumps({"tiktoken": tt.encode_ordinary(text), "tokenizers": hf.encode(text).ids}))
)";
  write_text(dir / "reference.py", script);
  // TIKTOKEN_CACHE_DIR="": tiktoken would otherwise cache files by path, and a later run could read stale ones.
  const std::string python = "TIKTOKEN_CACHE_DIR= python3 " + (dir / "reference.py").string() + " " +
                             (dir / "tok").string() + " " + (dir / "probe.txt").string() + " 2>&1";
  const Result r = run(python);
  INFO(r.output.substr(0, 2000));
  REQUIRE(r.exit_code == 0);
  const nlohmann::json reference = nlohmann::json::parse(r.output);
  CHECK(reference.at("tiktoken").get<std::vector<uint32_t>>() == ours);
  CHECK(reference.at("tokenizers").get<std::vector<uint32_t>>() == ours);
  fs::remove_all(dir);
}

TEST_CASE("l3c tokenizer train then encode then decode", "[tokenizer][cli]") {
  const fs::path dir = fresh_dir("cli");
  const std::string l3c = std::string(L3C_BINARY_DIR) + "/l3c";
  write_text(dir / "a.txt", shakespeare(50000));
  write_text(dir / "sample.txt", "Whence is that knocking? \xe2\x80\x94 It's 3 o'clock.\n\n  \xff end");
  const Result train = run(l3c + " tokenizer train --vocab-size 400 --threads 2 --out " + (dir / "tok").string() +
                           " --json " + (dir / "a.txt").string() + " 2>/dev/null");
  INFO(train.output);
  REQUIRE(train.exit_code == 0);
  const std::string last_line = train.output.substr(train.output.rfind('{'));
  const nlohmann::json summary = nlohmann::json::parse(last_line);
  CHECK(summary.at("vocab_size") == 400);
  CHECK(summary.at("merges") == 400 - 257);

  const Result encoded = run(l3c + " tokenizer encode --tokenizer " + (dir / "tok").string() + " " +
                             (dir / "sample.txt").string() + " 2>&1");
  REQUIRE(encoded.exit_code == 0);
  const auto tok = l3c::BpeTokenizer::load((dir / "tok").string());
  std::string expected;
  for (uint32_t id : tok->encode(l3c::test::read_text(dir / "sample.txt"))) {
    if (!expected.empty()) expected.push_back(' ');
    expected += std::to_string(id);
  }
  CHECK(encoded.output == expected + "\n");

  write_text(dir / "ids.txt", encoded.output);
  const Result decoded = run(l3c + " tokenizer decode --tokenizer " + (dir / "tok").string() + " < " +
                             (dir / "ids.txt").string() + " 2>&1");
  CHECK(decoded.exit_code == 0);
  CHECK(decoded.output == l3c::test::read_text(dir / "sample.txt"));

  write_text(dir / "bad_ids.txt", "1 2 400\n");
  const Result bad = run(l3c + " tokenizer decode --tokenizer " + (dir / "tok").string() + " < " +
                         (dir / "bad_ids.txt").string() + " 2>&1");
  CHECK(bad.exit_code == 2);
  CHECK_THAT(bad.output, Contains("token id 400"));
  const Result missing = run(l3c + " tokenizer encode --tokenizer " + (dir / "nowhere").string() + " < /dev/null 2>&1");
  CHECK(missing.exit_code == 2);
  CHECK_THAT(missing.output, Contains("nowhere"));
  fs::remove_all(dir);
}

TEST_CASE("bad tokenizer files give one clear error naming the file and position", "[tokenizer][errors]") {
  const fs::path dir = fresh_dir("bad");
  const std::string encoder = l3c::test::read_text(kGpt2 + "/encoder.json");
  const std::string merges = l3c::test::read_text(kGpt2 + "/vocab.bpe");
  auto folder = [&](const std::string& name, const std::string* enc, const std::string* bpe) {
    const fs::path d = dir / name;
    fs::create_directories(d);
    if (enc) write_text(d / "encoder.json", *enc);
    if (bpe) write_text(d / "vocab.bpe", *bpe);
    return d.string();
  };

  const std::string no_encoder = folder("no_encoder", nullptr, &merges);
  std::string message = user_error([&] { l3c::load_tokenizer(no_encoder); });
  CHECK_THAT(message, Contains(no_encoder) && Contains("encoder.json"));
  const std::string no_merges = folder("no_merges", &encoder, nullptr);
  message = user_error([&] { l3c::load_tokenizer(no_merges); });
  CHECK_THAT(message, Contains(no_merges) && Contains("vocab.bpe"));
  message = user_error([&] { l3c::load_tokenizer((dir / "does_not_exist").string()); });
  CHECK_THAT(message, Contains("does_not_exist"));

  const std::string malformed_json = "{\"a\": 0,\n \"b\" 1}";
  const std::string malformed = folder("malformed", &malformed_json, &merges);
  message = user_error([&] { l3c::load_tokenizer(malformed); });
  CHECK_THAT(message, Contains("encoder.json:2:") && Contains("malformed JSON"));

  std::string bad_merges = merges;
  const size_t third = bad_merges.find('\n', bad_merges.find('\n', bad_merges.find('\n') + 1) + 1) + 1;
  bad_merges.insert(third, "Ġthe zzqqxx\n");  // line 4
  const std::string unknown = folder("unknown_merge", &encoder, &bad_merges);
  message = user_error([&] { l3c::load_tokenizer(unknown); });
  CHECK_THAT(message, Contains("vocab.bpe:4:") && Contains("'zzqqxx' is not a token"));

  std::string two_spaces = "#version: 0.2\nĠ t\nh e x\n";
  const std::string bad_line = folder("bad_line", &encoder, &two_spaces);
  message = user_error([&] { l3c::load_tokenizer(bad_line); });
  CHECK_THAT(message, Contains("vocab.bpe:3:") && Contains("'h e x'"));

  const std::string small_encoder = R"({"a": 0, "b": 1})";
  const std::string no_bytes = folder("no_bytes", &small_encoder, &two_spaces);
  message = user_error([&] { l3c::load_tokenizer(no_bytes); });
  CHECK_THAT(message, Contains("encoder.json") && Contains("no token for the byte 0x00"));

  // An id far beyond the tokens given made the loader allocate for every id below it (2^28: until memory ran out).
  for (const std::string id : {"268435456", "16777216", "600"}) {
    const std::string huge_id = R"({"a": 0, "b": )" + id + "}";
    const std::string huge = folder("huge_id_" + id, &huge_id, &two_spaces);
    const auto start = std::chrono::steady_clock::now();
    message = user_error([&] { l3c::load_tokenizer(huge); });
    CHECK_THAT(message, Contains("encoder.json") && Contains("token 'b'") && Contains("got " + id));
    CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(5));
  }
  const std::string float_id = R"({"a": 0, "b": 1e400})";
  message = user_error([&] { l3c::load_tokenizer(folder("float_id", &float_id, &two_spaces)); });
  CHECK_THAT(message, Contains("encoder.json") && Contains("malformed JSON"));

  message = user_error([&] { gpt2().decode(std::vector<uint32_t>{464, 50257}); });
  CHECK_THAT(message, Contains("token id 50257") && Contains("50257 ids"));
  fs::remove_all(dir);
}
