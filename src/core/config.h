// Config: the typed structs a run is described by, read from JSON with validation.
// JSON -> struct: every key is known (unknown keys are errors), every value is type- and range-checked
// with a message naming the field ("train.lr: must be > 0, got -1"); fields may sit in nested objects
// ("model.l3.allocation.method") and hold lists ("model.l3.after_layers"); a file may "extends" another
// (path relative to the file itself; the child's keys override the parent's, objects merge
// recursively); command-line overrides "--set train.lr=3e-4" (or "--set model.l3.k=32") apply last.
// The resolved config (all defaults filled in) converts back to JSON, is printed at start and saved in
// the run folder.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/choice.h"
#include "core/tensor.h"

namespace l3c {

// ---- Choices of the config (core/choice.h): each field whose value is one of a fixed set of names is an enum ----
// How an L3 layer's allocation is computed (MODEL.md "LZW allocation").
enum class AllocationMethod : uint8_t { Lzw, Uniform, Unigram };
template <> struct ChoiceNames<AllocationMethod> {
  static constexpr std::array<std::string_view, 3> names = {"lzw", "uniform", "unigram"};
};
// How an L3 layer's W_mix starts: all normal, or its h-part the identity.
enum class MixInit : uint8_t { Normal, Identity };
template <> struct ChoiceNames<MixInit> {
  static constexpr std::array<std::string_view, 2> names = {"normal", "identity"};
};
// Learning-rate schedule after the warmup (src/optim/schedule.h).
enum class Schedule : uint8_t { Cosine, Wsd, Constant };
template <> struct ChoiceNames<Schedule> {
  static constexpr std::array<std::string_view, 3> names = {"cosine", "wsd", "constant"};
};
// Where a run computes: "auto" is the GPU when the build has the CUDA backend and a GPU is present, else the CPU
// (src/runtime/device.h resolves it).
enum class DeviceChoice : uint8_t { Auto, Cpu, Cuda };
template <> struct ChoiceNames<DeviceChoice> {
  static constexpr std::array<std::string_view, 3> names = {"auto", "cpu", "cuda"};
};
// Dtypes of the GPU's parameters, gradients and activations: fp32, or bf16 with fp32 master weights and moments.
enum class Precision : uint8_t { Fp32, Bf16 };
template <> struct ChoiceNames<Precision> {
  static constexpr std::array<std::string_view, 2> names = {"fp32", "bf16"};
};
// Activations recomputed in the backward instead of kept (src/model/llama.h Recompute).
enum class RecomputeChoice : uint8_t { None, Swiglu, Attention, All };
template <> struct ChoiceNames<RecomputeChoice> {
  static constexpr std::array<std::string_view, 4> names = {"none", "swiglu", "attention", "all"};
};
// What a non-finite loss or gradient norm does: end the run naming the step, or skip the step's update.
enum class NonFinitePolicy : uint8_t { Stop, Skip };
template <> struct ChoiceNames<NonFinitePolicy> {
  static constexpr std::array<std::string_view, 2> names = {"stop", "skip"};
};
// How the NCCL unique id travels between ranks (src/dist/bootstrap.h).
enum class NcclBootstrap : uint8_t { Auto, Mpi, Tcp, File };
template <> struct ChoiceNames<NcclBootstrap> {
  static constexpr std::array<std::string_view, 4> names = {"auto", "mpi", "tcp", "file"};
};
// DType (core/tensor.h) by dtype_name; a field may allow only some of them (train.dtype: f32 or f64).
template <> struct ChoiceNames<DType> {
  static constexpr std::array<std::string_view, 4> names = {"f32", "f64", "bf16", "i32"};
};

// How an L3 layer's allocation (rows per token id, MODEL.md "LZW allocation") is obtained.
struct L3AllocationConfig {
  AllocationMethod method = AllocationMethod::Lzw;
  std::string data;             // token shards (file, folder or glob) to compute it from at start
  std::string path;             // or a file written by `l3c allocate` (exclusive with data)
  int64_t eot = -1;             // end-of-text id splitting documents; -1: the shards' manifest.json, else none
};

// Large Lookup Layers (MODEL.md "Large Lookup Layer"): one layer after each listed decoder layer, all
// with the same sizes and allocation. Absent from the JSON (after_layers empty) = a dense model.
struct L3Config {
  std::vector<int64_t> after_layers;  // 0-based decoder layers, strictly increasing; required when model.l3 is given
  int64_t v = 0;                // required: table rows per layer, vocab_size <= v <= vocab_size * k
  int64_t k = 0;                // required: the most rows one token owns
  int64_t d_emb = 0;            // 0: d_model / 2 (d_model with tie_kv); resolved
  int64_t d_up = 0;             // 0: 4 * d_model; resolved
  bool tie_kv = false;          // W_V = W_K (needs d_emb = d_model; only w_k is stored)
  bool residual = false;        // h' = h + W_mix [z; h] instead of W_mix [z; h]
  double init_std = 0.02;       // W_K, W_V, W_up, W_mix
  MixInit mix_init = MixInit::Normal;  // identity: W_mix's h-part starts as the identity (z-part normal)
  L3AllocationConfig allocation;

  bool enabled() const { return !after_layers.empty(); }
  int64_t num_layers() const { return static_cast<int64_t>(after_layers.size()); }
};

// Which decoder layers a per-layer option applies to: "all" in JSON, or a list of 0-based layer indices.
struct LayerSelection {
  bool all = false;
  std::vector<int64_t> layers;  // strictly increasing when not all

  bool empty() const { return !all && layers.empty(); }
  bool contains(int64_t layer) const;
};

// Mixture-of-Experts FFNs (MODEL.md "Mixture-of-Experts FFN", Mixtral semantics): the FFN of each
// selected decoder layer is a routed set of SwiGLU experts. Absent from the JSON = dense FFNs.
struct MoeConfig {
  LayerSelection layers;        // required when model.moe is given: "all" or [0, 2, ...]
  int64_t experts = 0;          // required: experts per MoE layer
  int64_t top_k = 2;            // experts each token reaches (<= experts)
  int64_t expert_hidden = 0;    // required: each expert's SwiGLU hidden size
  int64_t shared_expert_hidden = 0;  // > 0: a SwiGLU every token passes through, added to the routed output
  bool normalize_topk = true;   // top-k weights renormalised to sum to 1
  double aux_loss = 0.01;       // load-balancing coefficient (alpha)
  double z_loss = 0.001;        // router z-loss coefficient (beta)
  double init_std = 0.0;        // 0: model.init_std (router and experts; down projections scaled as dense)

  bool enabled() const { return !layers.empty(); }
};

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
  L3Config l3;                  // optional: "model.l3"
  MoeConfig moe;                // optional: "model.moe"

  // Whether decoder layer i's FFN is a Mixture-of-Experts.
  bool is_moe_layer(int64_t i) const { return moe.enabled() && moe.layers.contains(i); }

  int64_t head_dim() const { return d_model / n_heads; }
};

struct DataConfig {
  std::string train;            // file, folder or glob of token shards
  std::string val;              // may be empty: no validation
  int64_t seq_len = 0;          // required
  bool shuffle = true;          // training windows in a shuffled order per epoch (src/data/dataloader.h)
  std::string tokenizer = "bytes";  // "bytes" or a BPE folder: what made the shards; generate decodes with it
};

struct TrainConfig {
  int64_t steps = 0;            // required: optimizer steps
  int64_t batch_tokens = 0;     // tokens per optimizer step; a multiple of micro_batch * seq_len
  int64_t micro_batch = 1;      // sequences per forward/backward
  double lr = 3e-4;
  double min_lr = 0.0;
  int64_t warmup_steps = 0;
  Schedule schedule = Schedule::Cosine;
  double decay_fraction = 0.2;  // wsd: fraction of steps spent in the final linear decay
  double weight_decay = 0.1;
  double table_lr_scale = 1.0;       // the L3 tables (group l3_table) train at lr * table_lr_scale
  double table_weight_decay = -1.0;  // the L3 tables' weight decay; -1: weight_decay
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double grad_clip = 1.0;       // 0 disables clipping
  uint64_t seed = 1337;
  int64_t threads = 0;          // 0: all cores
  DeviceChoice device = DeviceChoice::Auto;
  DType dtype = DType::F32;     // parameter and compute dtype on the CPU: f32 or f64
  NonFinitePolicy on_nonfinite = NonFinitePolicy::Stop;
  // Parameters that train: registry groups ("attention", "ffn", "norm", "l3_table", ...) or name prefixes
  // ("model.l3.", "model.layers.3."). Empty: every parameter. The others keep their values and AdamW state.
  std::vector<std::string> trainable;
  // CUDA: fp32 (exact comparisons with the CPU) or bf16 (bf16 parameter copies, activations and matmuls with
  // fp32 accumulation; fp32 master weights, AdamW moments, norms, softmax and loss).
  Precision precision = Precision::Fp32;
  // Activations recomputed in the backward instead of kept: none, swiglu (the SwiGLU product), attention (the
  // attention output) or all.
  RecomputeChoice recompute = RecomputeChoice::None;
  // Data parallelism: 0 keeps AdamW state and master weights whole on every rank; 1 (ZeRO-1) shards them over
  // the ranks as contiguous ranges of the flat buffer (a no-op at world size 1).
  int64_t zero = 0;

  // Micro-batches each rank accumulates per step: batch_tokens is the global batch, over all `ranks`.
  int64_t grad_accum_steps(int64_t seq_len, int64_t ranks = 1) const {
    return batch_tokens / (micro_batch * seq_len * ranks);
  }
};

struct EvalConfig {
  int64_t every = 0;            // steps between validation passes; 0: only at the end
  int64_t batches = 8;          // micro-batches per validation pass
  // Scored with the validation loss (src/eval): zero-shot tasks by name, held-out text files or folders.
  std::vector<std::string> tasks;
  std::vector<std::string> text;
  std::string tasks_dir = "../shared/data/evals";
  int64_t limit = 0;            // examples per task; 0: all
  int64_t text_max_bytes = 0;   // bytes per held-out document; 0: all
};

struct CheckpointConfig {
  int64_t every = 0;            // steps between checkpoints; 0: only the final one (and on a stop)
  int64_t keep = 2;             // how many recent checkpoints to keep
  int64_t milestone_every = 0;  // also keep every checkpoint whose step is a multiple of this; 0: none
};

// How the ranks of a data-parallel job talk (src/dist). Nothing here changes what is computed.
struct DistConfig {
  double timeout = 300.0;       // seconds a collective or the bootstrap waits for the other ranks before failing
  int64_t bucket_mb = 32;       // gradients are all-reduced in buckets of this many MiB
  bool row_sparse = true;       // L3 tables (and an untied embedding): all-reduce only the rows of tokens present
  NcclBootstrap nccl_bootstrap = NcclBootstrap::Auto;
  std::string shared_dir;       // "file" bootstrap: a folder every rank sees ("": run.dir)
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
  DistConfig dist;
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
