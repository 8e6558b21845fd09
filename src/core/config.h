// Config: the typed structs a run is described by, read from JSON with validation.
// JSON -> struct: every key is known (unknown keys are errors), every value is type- and range-checked
// with a message naming the field ("train.lr: must be > 0, got -1"); a file may "extends" another
// (path relative to the file itself; the child's keys override the parent's, objects merge
// recursively); command-line overrides "--set train.lr=3e-4" apply last. The resolved config (all
// defaults filled in) converts back to JSON, is printed at start and saved in the run folder.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace l3c {

struct ModelConfig {
  int64_t vocab_size = 0;       // required
  int64_t d_model = 0;          // required
  int64_t n_layers = 0;         // required
  int64_t n_heads = 0;          // required
  int64_t n_kv_heads = 0;       // 0 in JSON means "same as n_heads"; resolved to n_heads
  int64_t ffn_hidden = 0;       // required
  double rope_theta = 10000.0;
  double norm_eps = 1e-5;
  bool tie_embeddings = false;
  double init_std = 0.02;

  int64_t head_dim() const { return d_model / n_heads; }
};

struct DataConfig {
  std::string train;            // file, folder or glob of token shards
  std::string val;              // may be empty: no validation
  int64_t seq_len = 0;          // required
};

struct TrainConfig {
  int64_t steps = 0;            // required: optimizer steps
  int64_t batch_tokens = 0;     // tokens per optimizer step; a multiple of micro_batch * seq_len
  int64_t micro_batch = 1;      // sequences per forward/backward
  double lr = 3e-4;
  double min_lr = 0.0;
  int64_t warmup_steps = 0;
  std::string schedule = "cosine";   // "cosine" | "wsd" | "constant"
  double decay_fraction = 0.2;  // wsd: fraction of steps spent in the final linear decay
  double weight_decay = 0.1;
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double grad_clip = 1.0;       // 0 disables clipping
  uint64_t seed = 1337;
  int64_t threads = 0;          // 0: all cores
  std::string device = "cpu";   // "cpu" (the CUDA backend adds "cuda")
  std::string dtype = "f32";    // parameter and compute dtype on the CPU: "f32" | "f64"

  int64_t grad_accum_steps(int64_t seq_len) const { return batch_tokens / (micro_batch * seq_len); }
};

struct EvalConfig {
  int64_t every = 0;            // steps between validation passes; 0: only at the end
  int64_t batches = 8;          // micro-batches per validation pass
};

struct CheckpointConfig {
  int64_t every = 0;            // steps between checkpoints; 0: only the final weights
  int64_t keep = 2;             // how many recent checkpoints to keep
};

struct RunConfig {
  std::string dir = "runs/default";
};

struct Config {
  ModelConfig model;
  DataConfig data;
  TrainConfig train;
  EvalConfig eval;
  CheckpointConfig checkpoint;
  RunConfig run;
};

// Reads a config file, follows "extends", applies overrides ("a.b=value": the value is parsed as JSON
// when it parses, else taken as a string), validates and returns the typed config.
// Every problem is a UserError naming the file (with line and column for malformed JSON) or the field.
Config load_config(const std::string& path, const std::vector<std::string>& overrides = {});

// The same from an in-memory JSON object (no "extends" allowed): for tests and checkpoints.
Config config_from_json(const nlohmann::json& j);

// The resolved config with every field, in the schema's key order (hence ordered_json; it converts
// implicitly to nlohmann::json, which sorts keys).
nlohmann::ordered_json config_to_json(const Config& c);

// Reads a JSON file, turning a parse error into a UserError with file, line and column.
nlohmann::json read_json_file(const std::string& path);

}  // namespace l3c
