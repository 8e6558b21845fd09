// `l3c prepare` (src/data/prepare.h, src/data/text_source.h): inputs, normalisation, the document split,
// shard formats and sizes, the manifest, parallel encoding, bad input; the `l3c prepare` command and the
// FineWeb-Edu loader script (scripts/data/fineweb_edu.py --local) end to end.
#include <catch2/catch.hpp>

#include "test_util.h"

#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "core/errors.h"
#include "core/config.h"
#include "core/sha256.h"
#include "data/prepare.h"
#include "data/shard.h"
#include "data/text_source.h"
#include "data/tokenizer.h"

using namespace l3c;
using Catch::Matchers::Contains;
namespace fs = std::filesystem;

namespace {
using test::fresh_dir;
using test::read_text;
using test::write_text;

std::vector<uint32_t> shard_tokens(const fs::path& path) {
  TokenShard shard(path.string());
  return shard.read(0, shard.size());
}

// The bytes of a byte-level shard as text.
std::string shard_text(const fs::path& path) {
  std::string text;
  for (uint32_t id : shard_tokens(path)) text.push_back(static_cast<char>(id));
  return text;
}

// A byte-level tokenizer with a vocabulary above 65536 and an end-of-text id: ids are 65536 + byte, so
// its shards must be uint32.
class WideTokenizer final : public Tokenizer {
 public:
  static constexpr uint32_t kOffset = 65536;
  std::vector<uint32_t> encode(std::string_view text) const override {
    std::vector<uint32_t> ids;
    for (unsigned char c : text) ids.push_back(kOffset + c);
    return ids;
  }
  std::string decode(std::span<const uint32_t> ids) const override {
    std::string text;
    for (uint32_t id : ids) text.push_back(id == kOffset + 256 ? '|' : static_cast<char>(id - kOffset));
    return text;
  }
  int64_t vocab_size() const override { return kOffset + 257; }
  std::optional<uint32_t> eot_id() const override { return kOffset + 256; }
  std::string description() const override { return "wide-test"; }
  std::string checksum() const override { return "wide-test-checksum"; }
};

// The byte tokenizer with an end-of-text id (256): to see document separators in byte shards.
class BytesWithEot final : public Tokenizer {
 public:
  std::vector<uint32_t> encode(std::string_view text) const override { return ByteTokenizer().encode(text); }
  std::string decode(std::span<const uint32_t> ids) const override {
    std::string text;
    for (uint32_t id : ids) text.push_back(id == 256 ? '|' : static_cast<char>(id));
    return text;
  }
  int64_t vocab_size() const override { return 257; }
  std::optional<uint32_t> eot_id() const override { return 256; }
  std::string description() const override { return "bytes+eot"; }
  std::string checksum() const override { return "bytes+eot"; }
};

std::string decoded(const Tokenizer& tokenizer, const fs::path& shard) {
  const std::vector<uint32_t> ids = shard_tokens(shard);
  return tokenizer.decode(ids);
}

// `count` JSONL documents {"text": "<prefix><i>"}, i = 0 .. count - 1, written to `path`; returns the text.
std::string write_numbered_docs(const fs::path& path, int count, const std::string& prefix) {
  std::string jsonl;
  for (int i = 0; i < count; ++i) jsonl += "{\"text\": \"" + prefix + std::to_string(i) + "\"}\n";
  write_text(path, jsonl);
  return jsonl;
}

PrepareOptions options_for(const fs::path& out, std::vector<std::string> inputs) {
  PrepareOptions o;
  o.out = out.string();
  o.inputs = std::move(inputs);
  o.progress = false;
  o.threads = 2;
  return o;
}

// Files in a folder whose names contain `part`.
int count_files(const fs::path& dir, const std::string& part) {
  int n = 0;
  if (!fs::exists(dir)) return 0;
  for (const auto& entry : fs::directory_iterator(dir))
    if (entry.path().filename().string().find(part) != std::string::npos) ++n;
  return n;
}

}  // namespace

TEST_CASE("sha256 matches the FIPS 180-4 test vectors", "[prepare]") {
  CHECK(sha256_hex("") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  CHECK(sha256_hex("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  CHECK(sha256_hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq") ==
        "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  Sha256 split;  // fed in uneven pieces across block boundaries
  const std::string million(1000000, 'a');
  for (size_t i = 0; i < million.size(); i += 997) split.update(std::string_view(million).substr(i, 997));
  CHECK(split.hex_digest() == "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

TEST_CASE("prepare strips the BOM, turns CRLF into LF and keeps everything else", "[prepare]") {
  const fs::path dir = fresh_dir("normalise");
  write_text(dir / "in" / "a.txt", "\xEF\xBB\xBFline one\r\nline two\r\nlone\rcarriage \xC3\xA9\r\n");
  PrepareOptions o = options_for(dir / "out", {(dir / "in" / "a.txt").string()});
  o.val_fraction = 0.0;
  prepare_dataset(o, ByteTokenizer());
  CHECK(shard_text(dir / "out" / "train_000000.bin") == "line one\nline two\nlone\rcarriage \xC3\xA9\n");
  CHECK_FALSE(fs::exists(dir / "out" / "val_000000.bin"));
  CHECK(normalize_text("\xEF\xBB\xBF" "a\r\n", "x", 0, InvalidUtf8::Error, /*strip_bom=*/false) == "\xEF\xBB\xBF" "a\n");
}

TEST_CASE("JSONL: one document per line from the chosen field, separated by the end-of-text id", "[prepare]") {
  const fs::path dir = fresh_dir("jsonl");
  write_text(dir / "docs.jsonl",
              "{\"text\": \"first\\r\\ndoc\", \"body\": \"B1\"}\n\n  \n{\"text\": \"second \\u00e9\", \"body\": \"B2\"}\n"
              "{\"text\": \"\", \"body\": \"B3\"}");
  PrepareOptions o = options_for(dir / "out", {(dir / "docs.jsonl").string()});
  o.val_fraction = 0.0;
  const PrepareResult r = prepare_dataset(o, BytesWithEot());
  CHECK(decoded(BytesWithEot(), dir / "out" / "train_000000.bin") == "|first\ndoc|second \xC3\xA9");
  CHECK(r.manifest["documents"]["train"] == 2);  // the empty third document is skipped
  CHECK(r.manifest["separators"] == 2);

  o.out = (dir / "out_body").string();
  o.field = "body";
  prepare_dataset(o, BytesWithEot());
  CHECK(decoded(BytesWithEot(), dir / "out_body" / "train_000000.bin") == "|B1|B2|B3");
}

TEST_CASE("folders are read recursively in sorted order, hidden files skipped", "[prepare]") {
  const fs::path dir = fresh_dir("folders");
  write_text(dir / "in" / "b" / "2.txt", "two");
  write_text(dir / "in" / "a.txt", "one");
  write_text(dir / "in" / "c.jsonl", "{\"text\": \"three\"}\n");
  write_text(dir / "in" / ".hidden", std::string("\0\0binary", 8));
  const std::vector<TextInput> inputs = expand_text_inputs({(dir / "in").string()});
  REQUIRE(inputs.size() == 3);
  CHECK(fs::path(inputs[0].path).filename() == "a.txt");
  CHECK(fs::path(inputs[1].path).filename() == "2.txt");
  CHECK(inputs[2].jsonl);
  PrepareOptions o = options_for(dir / "out", {(dir / "in").string()});
  o.val_fraction = 0.0;
  prepare_dataset(o, BytesWithEot());
  CHECK(decoded(BytesWithEot(), dir / "out" / "train_000000.bin") == "|one|two|three");
}

TEST_CASE("the document split is a pure function of (seed, index)", "[prepare]") {
  const fs::path dir = fresh_dir("split");
  const std::string jsonl = write_numbered_docs(dir / "docs.jsonl", 200, "d");
  auto run = [&](const std::string& name, uint64_t seed, const std::string& input) {
    PrepareOptions o = options_for(dir / name, {input});
    o.val_fraction = 0.25;
    o.seed = seed;
    const PrepareResult r = prepare_dataset(o, BytesWithEot());
    return std::make_pair(decoded(BytesWithEot(), dir / name / "train_000000.bin"),
                          decoded(BytesWithEot(), dir / name / "val_000000.bin"));
  };
  const auto a = run("a", 7, (dir / "docs.jsonl").string());
  const auto again = run("again", 7, (dir / "docs.jsonl").string());
  const auto other = run("other", 8, (dir / "docs.jsonl").string());
  CHECK(a == again);
  CHECK(a != other);
  // Exactly the documents the rule names, in input order.
  std::string expected_val;
  int in_val = 0;
  for (int i = 0; i < 200; ++i)
    if (document_in_val(7, i, 0.25)) expected_val += "|d" + std::to_string(i), ++in_val;
  CHECK(a.second == expected_val);
  CHECK(in_val > 30);
  CHECK(in_val < 70);
  // Documents added at the end do not move earlier ones.
  write_text(dir / "more.jsonl", jsonl + "{\"text\": \"extra1\"}\n{\"text\": \"extra2\"}\n");
  const auto more = run("more", 7, (dir / "more.jsonl").string());
  CHECK(more.second.rfind(a.second, 0) == 0);
  CHECK(more.first.rfind(a.first, 0) == 0);
}

TEST_CASE("a tiny corpus still gets a validation document, and one document is split at a line", "[prepare]") {
  const fs::path dir = fresh_dir("single");
  SECTION("two documents") {
    write_text(dir / "a.txt", "alpha");
    write_text(dir / "b.txt", "beta");
    PrepareOptions o = options_for(dir / "out", {(dir / "a.txt").string(), (dir / "b.txt").string()});
    o.val_fraction = 0.01;  // the rule alone would put neither into validation
    const PrepareResult r = prepare_dataset(o, ByteTokenizer());
    CHECK(r.manifest["documents"]["train"] == 1);
    CHECK(r.manifest["documents"]["val"] == 1);
  }
  SECTION("one document") {
    std::string text;
    for (int i = 0; i < 100; ++i) text += "line " + std::to_string(i) + " of the play\n";
    write_text(dir / "play.txt", text);
    PrepareOptions o = options_for(dir / "out", {(dir / "play.txt").string()});
    o.val_fraction = 0.1;
    const PrepareResult r = prepare_dataset(o, ByteTokenizer());
    CHECK(r.manifest["split"] == "lines");
    const std::string train = shard_text(dir / "out" / "train_000000.bin");
    const std::string val = shard_text(dir / "out" / "val_000000.bin");
    CHECK(train + val == text);
    CHECK(train.back() == '\n');
    CHECK(val.rfind("line ", 0) == 0);
    CHECK(std::abs(static_cast<double>(val.size()) - 0.1 * static_cast<double>(text.size())) < 25);
    CHECK(single_document_cut("one line only", 0.1) == std::string("one line only").size());
  }
}

TEST_CASE("shards are uint16 for vocabularies up to 65536 ids, else uint32", "[prepare]") {
  const fs::path dir = fresh_dir("width");
  write_text(dir / "a.txt", "hello world");
  PrepareOptions o = options_for(dir / "narrow", {(dir / "a.txt").string()});
  o.val_fraction = 0.0;
  prepare_dataset(o, ByteTokenizer());
  CHECK(fs::file_size(dir / "narrow" / "train_000000.bin") == 1024 + 2 * 11);
  o.out = (dir / "wide").string();
  const PrepareResult r = prepare_dataset(o, WideTokenizer());
  CHECK(fs::file_size(dir / "wide" / "train_000000.bin") == 1024 + 4 * 12);
  CHECK(r.manifest["token_bytes"] == 4);
  const std::string bytes = read_text(dir / "wide" / "train_000000.bin");
  int32_t header[3];
  std::memcpy(header, bytes.data(), sizeof header);
  CHECK(header[0] == kShardMagicU32);
  CHECK(header[1] == kShardVersionU32);
  CHECK(header[2] == 12);
  CHECK(decoded(WideTokenizer(), dir / "wide" / "train_000000.bin") == "|hello world");
}

TEST_CASE("the manifest records the tokenizer, the inputs, counts and shards", "[prepare]") {
  const fs::path dir = fresh_dir("manifest");
  const std::string jsonl = write_numbered_docs(dir / "docs.jsonl", 40, "document number ");
  write_text(dir / "extra.txt", "an extra text file\n");
  PrepareOptions o = options_for(dir / "out", {(dir / "docs.jsonl").string(), (dir / "extra.txt").string()});
  o.val_fraction = 0.2;
  o.seed = 3;
  const PrepareResult r = prepare_dataset(o, BytesWithEot());
  const nlohmann::json m = read_json_file((dir / "out" / "manifest.json").string());
  CHECK(nlohmann::json(r.manifest) == m);
  CHECK(m["tokenizer"]["spec"] == "bytes+eot");
  CHECK(m["tokenizer"]["sha256"] == "bytes+eot");
  CHECK(m["tokenizer"]["vocab_size"] == 257);
  CHECK(m["tokenizer"]["eot_id"] == 256);
  REQUIRE(m["inputs"].size() == 2);
  CHECK(m["inputs"][0]["path"] == (dir / "docs.jsonl").string());
  CHECK(m["inputs"][0]["bytes"] == jsonl.size());
  CHECK(m["inputs"][0]["sha256"] == sha256_hex(jsonl));
  CHECK(m["inputs"][1]["sha256"] == sha256_file((dir / "extra.txt").string()));
  CHECK(m["documents"]["train"].get<int>() + m["documents"]["val"].get<int>() == 41);
  const int64_t train_tokens = static_cast<int64_t>(shard_tokens(dir / "out" / "train_000000.bin").size());
  const int64_t val_tokens = static_cast<int64_t>(shard_tokens(dir / "out" / "val_000000.bin").size());
  CHECK(m["tokens"]["train"] == train_tokens);
  CHECK(m["tokens"]["val"] == val_tokens);
  CHECK(m["separators"] == 41);
  CHECK(m["bytes_per_token"].get<double>() == Approx(1.0));  // bytes: one token per byte of text
  CHECK(m["bytes"] == train_tokens + val_tokens - 41);
  CHECK(m["shards"]["train"] == nlohmann::json::array({"train_000000.bin"}));
  CHECK(m["shards"]["val"] == nlohmann::json::array({"val_000000.bin"}));
  CHECK(m["seed"] == 3);
  CHECK(m["val_fraction"] == 0.2);
  // A folder that holds a prepared dataset is never overwritten.
  CHECK_THROWS_WITH(prepare_dataset(o, BytesWithEot()), Contains("already holds a prepared dataset"));
}

TEST_CASE("the stream is split into shards of at most --shard-tokens tokens", "[prepare]") {
  const fs::path dir = fresh_dir("shard_size");
  std::string text;
  for (int i = 0; i < 1000; ++i) text.push_back(static_cast<char>('a' + i % 26));
  write_text(dir / "a.txt", text);
  PrepareOptions o = options_for(dir / "out", {(dir / "a.txt").string()});
  o.val_fraction = 0.0;
  o.shard_tokens = 300;
  const PrepareResult r = prepare_dataset(o, ByteTokenizer());
  REQUIRE(r.manifest["shards"]["train"].size() == 4);
  std::string joined;
  for (int k = 0; k < 4; ++k) {
    const fs::path shard = dir / "out" / fmt::format("train_{:06d}.bin", k);
    CHECK(TokenShard(shard.string()).size() == (k < 3 ? 300 : 100));
    joined += shard_text(shard);
  }
  CHECK(joined == text);
  CHECK(count_files(dir / "out", ".tmp") == 0);
}

TEST_CASE("parallel encoding gives the same shards on any thread count", "[prepare]") {
  const fs::path dir = fresh_dir("threads");
  std::string big;  // one document of ~1.2 MB: cut into pieces that are encoded in parallel
  for (int i = 0; big.size() < 1200000; ++i) big += "Line " + std::to_string(i) + ": some words, more words.\n";
  write_text(dir / "big.txt", big);
  for (int i = 0; i < 20; ++i) write_text(dir / "small" / fmt::format("{:02d}.txt", i), "small doc " + std::to_string(i));
  const std::vector<size_t> ends = encoding_piece_ends(big, 256 * 1024);
  CHECK(ends.size() >= 4);
  CHECK(ends.back() == big.size());
  for (size_t k = 0; k + 1 < ends.size(); ++k) CHECK(big[ends[k]] == '\n');
  auto run = [&](const std::string& name, int threads) {
    PrepareOptions o = options_for(dir / name, {(dir / "big.txt").string(), (dir / "small").string()});
    o.threads = threads;
    prepare_dataset(o, BytesWithEot());
    return read_text(dir / name / "train_000000.bin") + read_text(dir / name / "val_000000.bin");
  };
  CHECK(run("one", 1) == run("two", 2));
}

TEST_CASE("pieces of a document encode to the ids of the whole document with GPT-2 BPE", "[prepare][bpe]") {
  const fs::path data = fs::path(L3C_SOURCE_DIR) / ".." / "shared" / "data";
  const std::unique_ptr<Tokenizer> gpt2 = load_tokenizer((data / "gpt2").string());
  for (const fs::path& file : {data / "tinyshakespeare" / "input.txt", data / "heldout" / "ENG18720_Lynn.txt"}) {
    const std::string text = read_text(file).substr(0, 300000);
    const std::vector<size_t> ends = encoding_piece_ends(text, 16 * 1024);
    REQUIRE(ends.size() > 10);
    std::vector<uint32_t> pieces;
    size_t begin = 0;
    for (size_t end : ends) {
      const std::vector<uint32_t> ids = gpt2->encode(std::string_view(text).substr(begin, end - begin));
      pieces.insert(pieces.end(), ids.begin(), ids.end());
      begin = end;
    }
    INFO(file.string());
    CHECK(pieces == gpt2->encode(text));
  }
}

TEST_CASE("invalid UTF-8 is an error with file and byte offset, or replaced by U+FFFD", "[prepare]") {
  const fs::path dir = fresh_dir("utf8");
  write_text(dir / "bad.txt", "good text\nthen \xC3\x28 bad\n");
  PrepareOptions o = options_for(dir / "out", {(dir / "bad.txt").string()});
  o.val_fraction = 0.0;
  CHECK_THROWS_WITH(prepare_dataset(o, ByteTokenizer()),
                    Contains("bad.txt") && Contains("invalid UTF-8 at byte offset 15") && Contains("--invalid-utf8 replace"));
  CHECK(count_files(dir / "out", ".bin") == 0);
  o.invalid_utf8 = InvalidUtf8::Replace;
  prepare_dataset(o, ByteTokenizer());
  CHECK(shard_text(dir / "out" / "train_000000.bin") == "good text\nthen \xEF\xBF\xBD( bad\n");
  // Maximal subparts: one U+FFFD per broken sequence, as Python's decoder does.
  CHECK(normalize_text("a\xE2\x82z\xF0\x9F\x98\xFF\xC0\xAF", "x", 0, InvalidUtf8::Replace) ==
        "a\xEF\xBF\xBDz\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");
  CHECK_THROWS_WITH(normalize_text("ok\xED\xA0\x80", "f.txt", 100, InvalidUtf8::Error),
                    Contains("f.txt") && Contains("byte offset 102") && Contains("ED A0 80"));
  // In JSONL the message names the line, and the offset is the file's.
  write_text(dir / "bad.jsonl", "{\"text\": \"fine\"}\n{\"text\": \"x\xFF\"}\n");
  o.out = (dir / "out_jsonl").string();
  o.inputs = {(dir / "bad.jsonl").string()};
  o.invalid_utf8 = InvalidUtf8::Error;
  CHECK_THROWS_WITH(prepare_dataset(o, ByteTokenizer()), Contains("bad.jsonl:2") && Contains("byte offset 28"));
}

TEST_CASE("bad input names the file and position, and leaves no shard behind", "[prepare]") {
  const fs::path dir = fresh_dir("bad_input");
  // A good, long first input makes shards before the bad one is reached.
  std::string good;
  for (int i = 0; i < 5000; ++i) good += "word ";
  write_text(dir / "a_good.txt", good);
  PrepareOptions o = options_for(dir / "out", {});
  o.shard_tokens = 1000;
  auto expect_error = [&](const std::string& name, const std::string& content, const std::string& message) {
    write_text(dir / name, content);
    o.inputs = {(dir / "a_good.txt").string(), (dir / name).string()};
    CHECK_THROWS_WITH(prepare_dataset(o, ByteTokenizer()), Contains(name) && Contains(message));
    CHECK(count_files(dir / "out", ".bin") == 0);
    CHECK(count_files(dir / "out", "manifest") == 0);
    fs::remove(dir / name);
  };
  SECTION("empty file") { expect_error("empty.txt", "", "empty file"); }
  SECTION("only a byte-order mark") { expect_error("bom.txt", "\xEF\xBB\xBF", "empty file"); }
  SECTION("binary file") { expect_error("image.png", std::string("\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR", 16), "NUL byte at byte offset 8"); }
  SECTION("JSONL line that is not JSON") {
    expect_error("docs.jsonl", "{\"text\": \"ok\"}\n{\"text\": oops}\n", "docs.jsonl:2: not a JSON object");
  }
  SECTION("JSONL line that is JSON but not an object") {
    expect_error("docs.jsonl", "{\"text\": \"ok\"}\n[1, 2]\n", "docs.jsonl:2: expected a JSON object");
  }
  SECTION("JSONL line without the field") {
    expect_error("docs.jsonl", "{\"text\": \"ok\"}\n\n{\"content\": \"x\", \"id\": 3}\n",
                 "docs.jsonl:3: no \"text\" field (the object has: content, id)");
  }
  SECTION("JSONL field that is not a string") {
    expect_error("docs.jsonl", "{\"text\": 12}\n", "docs.jsonl:1: field \"text\" must be a string");
  }
  SECTION("JSONL file with only blank lines") { expect_error("blank.jsonl", "\n  \n", "no documents"); }
  SECTION("missing input") {
    o.inputs = {(dir / "nope.txt").string()};
    CHECK_THROWS_WITH(prepare_dataset(o, ByteTokenizer()), Contains("nope.txt: no such file or folder"));
  }
  SECTION("bad options") {
    o.inputs = {(dir / "a_good.txt").string()};
    o.val_fraction = 1.0;
    CHECK_THROWS_WITH(prepare_dataset(o, ByteTokenizer()), Contains("--val-fraction"));
    o.val_fraction = 0.1;
    o.shard_tokens = 1;
    CHECK_THROWS_WITH(prepare_dataset(o, ByteTokenizer()), Contains("--shard-tokens"));
  }
  CHECK(count_files(dir / "out", ".tmp") == 0);
}

namespace {
using Result = test::CommandResult;

// Runs a command with stdout and stderr together.
Result run_with_stderr(const std::string& command) { return test::run_command(command + " 2>&1"); }

const std::string kL3c = std::string(L3C_BINARY_DIR) + "/l3c";
}  // namespace

TEST_CASE("l3c prepare: a JSON summary on success, exit 2 and one message on bad input", "[prepare][cli]") {
  const fs::path dir = fresh_dir("cli");
  write_text(dir / "docs.jsonl", "{\"text\": \"one\"}\n{\"text\": \"two\"}\n{\"text\": \"three\"}\n");
  const Result ok = test::run_l3c("prepare --json --no-progress --val-fraction 0.3 --out " + (dir / "out").string() +
                                " " + (dir / "docs.jsonl").string());
  INFO(ok.output);
  REQUIRE(ok.exit_code == 0);
  const auto summary = test::last_json_line(ok.output);
  CHECK(summary["documents"]["train"].get<int>() + summary["documents"]["val"].get<int>() == 3);
  CHECK(summary["tokenizer"]["spec"] == "bytes");

  write_text(dir / "bad.jsonl", "{\"text\": \"one\"}\n{\"txt\": \"two\"}\n");
  const Result bad = test::run_l3c("prepare --out " + (dir / "bad_out").string() + " " + (dir / "bad.jsonl").string());
  CHECK(bad.exit_code == 2);
  CHECK_THAT(bad.output, Contains("error: ") && Contains("bad.jsonl:2: no \"text\" field"));
  CHECK(count_files(dir / "bad_out", ".bin") == 0);
  const Result option = test::run_l3c("prepare --invalid-utf8 maybe --out " + (dir / "o").string() + " " +
                                    (dir / "docs.jsonl").string());
  CHECK(option.exit_code == 2);
  CHECK_THAT(option.output, Contains("--invalid-utf8: must be one of error, replace; got \"maybe\""));
}

TEST_CASE("scripts/data/fineweb_edu.py --local writes JSONL that prepare turns into the same shards", "[prepare][cli]") {
  const fs::path dir = fresh_dir("fineweb");
  // A small FineWeb-Edu-like file: the fields of the real dataset, non-ASCII text, CRLF inside a document.
  std::string jsonl;
  for (int i = 0; i < 30; ++i) {
    nlohmann::json row = {{"text", "Document " + std::to_string(i) + ": caf\u00e9 \u2014 r\u00e9sum\u00e9.\r\nSecond line."},
                          {"id", "<urn:uuid:" + std::to_string(i) + ">"}, {"dump", "CC-MAIN-2024-10"},
                          {"url", "https://example.org/" + std::to_string(i)}, {"score", 3.1 + 0.01 * i},
                          {"int_score", i % 5 == 0 ? 2 : 3}, {"language", "en"}, {"token_count", 12}};
    jsonl += row.dump() + "\n";
  }
  write_text(dir / "sample.jsonl", jsonl);
  const std::string script = std::string(L3C_SOURCE_DIR) + "/scripts/data/fineweb_edu.py";
  const Result loader = run_with_stderr("python3 " + script + " --local " + (dir / "sample.jsonl").string() + " --out " +
                                    (dir / "jsonl").string() + " --docs-per-file 7 --l3c " + kL3c +
                                    " --tokenizer bytes --shards " + (dir / "shards").string() + " --val-fraction 0.2");
  INFO(loader.output);
  REQUIRE(loader.exit_code == 0);
  CHECK(count_files(dir / "jsonl", ".jsonl") == 5);  // 30 documents, 7 per file
  const Result direct = test::run_l3c("prepare --no-progress --val-fraction 0.2 --field text --out " +
                                    (dir / "direct").string() + " " + (dir / "sample.jsonl").string());
  INFO(direct.output);
  REQUIRE(direct.exit_code == 0);
  for (const std::string name : {"train_000000.bin", "val_000000.bin"})
    CHECK(read_text(dir / "shards" / name) == read_text(dir / "direct" / name));
  const nlohmann::json m = read_json_file((dir / "shards" / "manifest.json").string());
  CHECK(m["documents"]["train"].get<int>() + m["documents"]["val"].get<int>() == 30);
  // --min-int-score filters like the dataset's own int_score field.
  const Result filtered = run_with_stderr("python3 " + script + " --local " + (dir / "sample.jsonl").string() + " --out " +
                                      (dir / "filtered").string() + " --min-int-score 3");
  INFO(filtered.output);
  REQUIRE(filtered.exit_code == 0);
  std::ifstream in(dir / "filtered" / "fineweb_edu_000000.jsonl");
  int lines = 0;
  for (std::string line; std::getline(in, line);) ++lines;
  CHECK(lines == 24);
}

TEST_CASE("a run records its tokenizer: training checks it against the shards, generate decodes with it",
          "[prepare][cli]") {
  const fs::path dir = fresh_dir("run_tokenizer");
  const std::string shakespeare =
      (fs::path(L3C_SOURCE_DIR) / ".." / "shared" / "data" / "tinyshakespeare" / "input.txt").string();
  const std::string tokenizer = (dir / "tok").string();
  const Result trained = test::run_l3c("tokenizer train --vocab-size 300 --out " + tokenizer + " " + shakespeare);
  INFO(trained.output);
  REQUIRE(trained.exit_code == 0);
  const Result prepared = test::run_l3c("prepare --no-progress --tokenizer " + tokenizer + " --out " +
                                      (dir / "data").string() + " " + shakespeare);
  INFO(prepared.output);
  REQUIRE(prepared.exit_code == 0);
  write_text(dir / "c.json", R"({
  "model": {"vocab_size": 300, "d_model": 32, "n_layers": 1, "n_heads": 2, "ffn_hidden": 64},
  "data": {"train": ")" + (dir / "data" / "train_*.bin").string() + R"(", "val": ")" +
                                  (dir / "data" / "val_*.bin").string() + R"(", "seq_len": 32},
  "train": {"steps": 2, "micro_batch": 2, "lr": 1e-3},
  "eval": {"batches": 1}
})");
  const std::string train = kL3c + " train " + (dir / "c.json").string() + " --set run.dir=" + (dir / "run").string();
  const Result mismatch = run_with_stderr(train);
  CHECK(mismatch.exit_code == 2);
  CHECK_THAT(mismatch.output, Contains("data.train: the shards in") && Contains("were made with tokenizer " + tokenizer) &&
                                  Contains("--set data.tokenizer=" + tokenizer));
  CHECK_FALSE(fs::exists(dir / "run" / "config.json"));
  const Result ok = run_with_stderr(train + " --set data.tokenizer=" + tokenizer);
  INFO(ok.output);
  REQUIRE(ok.exit_code == 0);
  const Result sample = test::run_l3c("generate --json --tokens 20 --prompt ROMEO: --checkpoint " + (dir / "run").string());
  INFO(sample.output);
  REQUIRE(sample.exit_code == 0);
  const size_t end = sample.output.find_last_not_of('\n');
  const size_t start = sample.output.rfind('\n', end);
  const auto j = nlohmann::json::parse(sample.output.substr(start == std::string::npos ? 0 : start + 1));
  CHECK(j["tokenizer"] == tokenizer);
  CHECK(j["text"].get<std::string>().rfind("ROMEO:", 0) == 0);
  CHECK(j["prompt_tokens"].get<int>() >= 1);
  CHECK(j["prompt_tokens"].get<int>() <= 6);
  CHECK(j["generated_tokens"].get<int>() <= 20);
  // A tokenizer that does not fit the model is refused.
  const Result wrong = test::run_l3c("generate --tokenizer " +
                                   (fs::path(L3C_SOURCE_DIR) / ".." / "shared" / "data" / "gpt2").string() +
                                   " --checkpoint " + (dir / "run").string());
  CHECK(wrong.exit_code == 2);
  CHECK_THAT(wrong.output, Contains("50257 ids but the model's vocabulary (model.vocab_size) is 300"));
}
