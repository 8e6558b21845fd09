// Limits on what l3c reads. Every size, count, nesting depth and thread count that comes from a file, a config
// or the command line is checked against these before anything is allocated for it, so that a hostile or
// mistaken input ends with one error naming the field and the limit instead of allocating without bound.
// They sit far above any model or data l3c is meant for (the paper's largest model has 24 layers, 180K
// token ids and d_model 1536); docs/design.md ("Hostile input") lists them.
#pragma once
#include <cstdint>
#include <string_view>

namespace l3c::limits {

constexpr int64_t kMaxVocabSize = int64_t{1} << 24;       // token ids: model.vocab_size, encoder.json ids
constexpr int64_t kMaxWidth = int64_t{1} << 20;           // d_model, heads, FFN and expert widths, L3 d_emb/d_up/k
constexpr int64_t kMaxLayers = 1024;                      // model.n_layers
constexpr int64_t kMaxExperts = 4096;                     // model.moe.experts (per layer)
constexpr int64_t kMaxSeqLen = int64_t{1} << 22;          // data.seq_len
constexpr int64_t kMaxMicroBatch = int64_t{1} << 20;      // train.micro_batch
constexpr int64_t kMaxSteps = int64_t{1} << 40;           // train.steps, warmup, eval/checkpoint periods
constexpr int64_t kMaxParamTensors = int64_t{1} << 20;    // named parameter tensors of one model
constexpr int64_t kMaxParameters = int64_t{1} << 42;      // parameters of one model (4.4 T)
constexpr int kMaxJsonDepth = 128;                        // nesting of any JSON l3c parses
constexpr uint64_t kMaxSafetensorsHeader = uint64_t{100} << 20;  // bytes (the Python package's limit too)
constexpr int kThreadsPerCore = 4;                        // most threads: cores x this

// The most threads a command may ask for: the machine's cores times kThreadsPerCore.
int max_threads();

// A thread count from a config or an option (`what` names it): 0 stays 0 ("all cores"); a negative count or one
// above max_threads() is a UserError naming `what`, the value and the limit.
int checked_threads(int64_t requested, std::string_view what);

}  // namespace l3c::limits
