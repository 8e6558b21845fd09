// `l3c prepare --out DIR [--val-fraction F] INPUT...`: text files (or folders of them) -> token shards
// with the byte-level tokenizer: DIR/train_000000.bin and DIR/val_000000.bin. The validation split is
// the last F of the token stream.
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "cli.h"
#include "commands.h"
#include "core/errors.h"
#include "data/tokenizer.h"
#include "data/shard.h"

namespace l3c::cmd {

namespace {
std::vector<std::string> expand_inputs(const std::vector<std::string>& inputs) {
  namespace fs = std::filesystem;
  std::vector<std::string> files;
  for (const std::string& input : inputs) {
    std::error_code ec;
    if (fs::is_directory(input, ec)) {
      std::vector<std::string> inside;
      for (const auto& entry : fs::recursive_directory_iterator(input))
        if (entry.is_regular_file()) inside.push_back(entry.path().string());
      std::sort(inside.begin(), inside.end());
      if (inside.empty()) fail("{}: folder holds no files", input);
      files.insert(files.end(), inside.begin(), inside.end());
    } else if (fs::is_regular_file(input, ec)) {
      files.push_back(input);
    } else {
      fail("{}: no such file or folder", input);
    }
  }
  return files;
}
}  // namespace

int prepare(const std::vector<std::string>& argv) {
  const cli::Args args = cli::parse(argv, {{"out", "val-fraction", "tokenizer"}, {"json"}, 1, 1 << 20,
                                           "l3c prepare --out DIR [--val-fraction F] [--tokenizer bytes] INPUT..."});
  const std::string out = args.require("out");
  const double val_fraction = args.get_double("val-fraction", 0.1);
  if (!(val_fraction >= 0.0 && val_fraction < 1.0)) fail("--val-fraction: must be in [0, 1), got {}", val_fraction);
  if (args.get("tokenizer", "bytes") != "bytes")
    fail("--tokenizer: only 'bytes' (byte-level tokens, vocabulary 256) is available, got '{}'", args.get("tokenizer", ""));

  std::vector<uint32_t> tokens;
  const std::vector<std::string> files = expand_inputs(args.positional);
  for (const std::string& file : files) {
    std::ifstream in(file, std::ios::binary);
    if (!in) fail("{}: cannot read", file);
    std::stringstream buffer;
    buffer << in.rdbuf();
    const std::vector<uint32_t> ids = ByteTokenizer().encode(buffer.str());
    tokens.insert(tokens.end(), ids.begin(), ids.end());
  }
  if (tokens.empty()) fail("the inputs hold no text");

  std::error_code ec;
  std::filesystem::create_directories(out, ec);
  if (ec) fail("--out {}: cannot create the folder: {}", out, ec.message());
  const auto val_tokens = static_cast<size_t>(std::llround(val_fraction * static_cast<double>(tokens.size())));
  const size_t train_tokens = tokens.size() - val_tokens;
  const std::string train_path = (std::filesystem::path(out) / "train_000000.bin").string();
  const std::string val_path = (std::filesystem::path(out) / "val_000000.bin").string();
  write_shard(train_path, std::vector<uint32_t>(tokens.begin(), tokens.begin() + static_cast<int64_t>(train_tokens)));
  if (val_tokens > 0) write_shard(val_path, std::vector<uint32_t>(tokens.begin() + static_cast<int64_t>(train_tokens), tokens.end()));
  spdlog::info("prepare: {} files, {} tokens -> {} train + {} val tokens in {}", files.size(), tokens.size(), train_tokens,
               val_tokens, out);
  if (args.flag("json"))
    cli::print_json_line(nlohmann::json{{"files", files.size()}, {"train_tokens", train_tokens},
                                        {"val_tokens", val_tokens}, {"train", train_path},
                                        {"val", val_tokens > 0 ? val_path : ""}}
                             .dump());
  return 0;
}

}  // namespace l3c::cmd
