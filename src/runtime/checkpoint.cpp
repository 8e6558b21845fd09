// Checkpoints: writing, verifying, finding, pruning and loading (see checkpoint.h for the format).
#include "runtime/checkpoint.h"

#include "kernels/ops.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <map>
#include <string_view>
#include <thread>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "core/errors.h"
#include "core/file_io.h"
#include "core/limits.h"
#include "core/safetensors.h"
#include "core/sha256.h"
#include "optim/schedule.h"
#include "runtime/model_io.h"

namespace l3c {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

constexpr const char* kFormat = "l3c-checkpoint";
constexpr int64_t kVersion = 1;
constexpr const char* kModelFile = "model.safetensors";
constexpr const char* kOptimizerFile = "optimizer.safetensors";
constexpr const char* kTrainerFile = "trainer.json";
constexpr const char* kLatestFile = "latest";
constexpr const char* kStepPrefix = "step_";
constexpr const char* kTempPrefix = ".tmp_";

// The step of a folder named step_<digits>, or -1.
int64_t step_of(const std::string& name) {
  if (name.rfind(kStepPrefix, 0) != 0 || name.size() <= std::string_view(kStepPrefix).size()) return -1;
  const std::string digits = name.substr(std::string_view(kStepPrefix).size());
  if (digits.size() > 18 || !std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; }))
    return -1;
  return std::stoll(digits);
}

// The bytes of a safetensors file as pieces: the header, then each tensor's bytes (views, no copy).
std::vector<std::string_view> safetensors_pieces(const std::string& header, const std::vector<NamedTensor>& tensors) {
  std::vector<std::string_view> pieces{header};
  for (const NamedTensor& t : tensors) pieces.emplace_back(static_cast<const char*>(t.tensor.data), t.tensor.bytes());
  return pieces;
}

// The first parameter of `buffer` holding a NaN or an infinity, or "".
std::string first_non_finite(const ParamRegistry& registry, const FlatBuffer& buffer) {
  for (const ParamInfo& p : registry.params()) {
    bool bad = false;
    if (buffer.dtype() == DType::F32) {
      const float* x = buffer.ptr<float>() + p.offset;
#pragma omp parallel for reduction(|| : bad) schedule(static)
      for (int64_t i = 0; i < p.numel; ++i) bad = bad || !std::isfinite(x[i]);
    } else {
      const double* x = buffer.ptr<double>() + p.offset;
#pragma omp parallel for reduction(|| : bad) schedule(static)
      for (int64_t i = 0; i < p.numel; ++i) bad = bad || !std::isfinite(x[i]);
    }
    if (bad) return p.name;
  }
  return "";
}

// "the earlier checkpoints are intact (newest: step_00000200)" or "no earlier checkpoint exists".
std::string earlier_checkpoints(const std::string& run_dir) {
  const std::vector<int64_t> steps = checkpoint_steps(run_dir);
  if (steps.empty()) return "no earlier checkpoint exists";
  return fmt::format("the earlier checkpoints are intact (newest: {})",
                     (fs::path(checkpoints_dir(run_dir)) / checkpoint_name(steps.back())).string());
}

void pause_for_tests() {
  static const int64_t ms = test_hook_milliseconds("L3C_TEST_CHECKPOINT_PAUSE_MS");
  if (ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(ms));
}

// The checksum trainer.json carries of itself: sha256 of the object without "self_sha256", dumped
// compactly with sorted keys (nlohmann::json's canonical form; numbers round-trip exactly).
std::string self_checksum(json trainer) {
  trainer.erase("self_sha256");
  return sha256_hex(trainer.dump());
}

std::string short_hash(const std::string& hex) { return hex.substr(0, 16) + "..."; }

CheckpointCheck rejected(std::string reason, json trainer = json()) {
  return CheckpointCheck{false, std::move(reason), std::move(trainer)};
}

}  // namespace

int64_t test_hook_milliseconds(const char* variable) {
  const char* value = std::getenv(variable);
  if (value == nullptr || *value == '\0') return 0;
  char* end = nullptr;
  const long long ms = std::strtoll(value, &end, 10);
  return (end != nullptr && *end == '\0' && ms > 0) ? ms : 0;
}

std::string checkpoint_name(int64_t step) { return fmt::format("{}{:08d}", kStepPrefix, step); }

std::string checkpoints_dir(const std::string& run_dir) { return (fs::path(run_dir) / "checkpoints").string(); }

std::vector<int64_t> checkpoint_steps(const std::string& run_dir) {
  std::vector<int64_t> steps;
  std::error_code ec;
  const fs::path root = checkpoints_dir(run_dir);
  if (!fs::is_directory(root, ec)) return steps;
  for (const fs::directory_entry& entry : fs::directory_iterator(root, ec)) {
    const int64_t step = step_of(entry.path().filename().string());
    if (step >= 0 && entry.is_directory(ec)) steps.push_back(step);
  }
  std::sort(steps.begin(), steps.end());
  return steps;
}

// The buffer itself when it is in host memory, else a host copy of it in `copy` (GPU runs).
const FlatBuffer& on_host(const FlatBuffer& buffer, FlatBuffer& copy) {
  if (buffer.device() == Device::CPU) return buffer;
  copy = FlatBuffer(buffer.numel(), buffer.dtype());
  ops::copy(copy.all(), buffer.all());
  return copy;
}

std::string write_checkpoint(const std::string& run_dir, const CheckpointState& state) {
  const TrainerProgress& progress = state.progress;
  const std::string name = checkpoint_name(progress.step);
  const fs::path root = checkpoints_dir(run_dir);
  const fs::path temp = root / (kTempPrefix + name);
  const fs::path final_dir = root / name;
  const ParamRegistry& registry = state.model.registry();
  FlatBuffer first_copy, second_copy;
  const FlatBuffer& first_moment = on_host(state.optimizer.first_moment(), first_copy);
  const FlatBuffer& second_moment = on_host(state.optimizer.second_moment(), second_copy);
  // A checkpoint never holds non-finite values: resuming from one could only fail again.
  for (const auto& [what, buffer] : {std::pair<const char*, const FlatBuffer*>{"weights", &state.params},
                                     {"AdamW first moment", &first_moment},
                                     {"AdamW second moment", &second_moment}}) {
    const std::string bad = first_non_finite(registry, *buffer);
    if (!bad.empty())
      fail("step {}: not writing checkpoint {}: the {} of {} hold a non-finite value; {}", progress.step,
           final_dir.string(), what, bad, earlier_checkpoints(run_dir));
  }

  const auto start = std::chrono::steady_clock::now();
  uint64_t total_bytes = 0;
  try {
    fs::create_directories(root);
    if (fs::exists(temp)) fs::remove_all(temp);
    fs::create_directory(temp);
    json files = json::object();
    auto record = [&](const char* file, const WrittenFile& written) {
      files[file] = {{"bytes", written.bytes}, {"sha256", written.sha256}};
      total_bytes += written.bytes;
      pause_for_tests();
    };

    // model.safetensors: exactly what save_model writes.
    const std::vector<NamedTensor> model = model_tensors(state.model, state.params);
    const std::string model_header = safetensors_header(model, model_metadata(state.config));
    record(kModelFile, write_file_durable((temp / kModelFile).string(), safetensors_pieces(model_header, model)));

    // optimizer.safetensors: the AdamW moments under exp_avg.<name> and exp_avg_sq.<name> (PyTorch's state
    // names), AdamW's step count in the metadata. The weights in model.safetensors are the master weights.
    std::vector<NamedTensor> moments;
    for (const ParamInfo& p : registry.params())
      moments.push_back({"exp_avg." + p.name, first_moment.view(p)});
    for (const ParamInfo& p : registry.params())
      moments.push_back({"exp_avg_sq." + p.name, second_moment.view(p)});
    const std::string optimizer_header = safetensors_header(
        moments, {{"format", "l3c-adamw"}, {"step", std::to_string(state.optimizer.steps_taken())}});
    record(kOptimizerFile,
           write_file_durable((temp / kOptimizerFile).string(), safetensors_pieces(optimizer_header, moments)));

    // trainer.json last: it lists the files above, and a folder without it is not a checkpoint.
    const TrainConfig& train = state.config.train;
    json trainer = {
        {"format", kFormat},
        {"version", kVersion},
        {"step", progress.step},
        {"tokens_seen", progress.tokens_seen},
        {"skipped_steps", progress.skipped_steps},
        {"optimizer_steps", state.optimizer.steps_taken()},
        {"data", {{"position", progress.data_position}, {"seed", train.seed}, {"shuffle", state.config.data.shuffle}}},
        {"rng", {{"generator", "philox4x32-10"}, {"seed", train.seed},
                 {"state", "none: every draw is keyed by (seed, purpose, stream, counter)"}}},
        {"schedule", {{"kind", std::string(choice_name(train.schedule))}, {"next_step", progress.step},
                      {"next_lr", learning_rate(train, std::min(progress.step, train.steps - 1))}}},
        {"world_size", progress.world_size},
        {"threads", progress.threads},
        {"config", json(config_to_json(state.config))},
        {"files", files},
    };
    trainer["self_sha256"] = self_checksum(trainer);
    const std::string text = trainer.dump(2) + "\n";
    const WrittenFile written = write_file_durable((temp / kTrainerFile).string(), {text});
    total_bytes += written.bytes;
    pause_for_tests();

    fsync_directory(temp.string());
    if (fs::exists(final_dir)) {
      // Only a folder that resume passed over can be here (resume refuses to overwrite a valid one).
      spdlog::warn("checkpoint: replacing {}, which did not verify", final_dir.string());
      fs::remove_all(final_dir);
    }
    fs::rename(temp, final_dir);
    fsync_directory(root.string());
  } catch (const std::exception& e) {
    std::error_code ec;
    fs::remove_all(temp, ec);
    fail("step {}: writing checkpoint {} failed: {}; {}", progress.step, final_dir.string(), e.what(),
         earlier_checkpoints(run_dir));
  }
  // The checkpoint is complete; the pointer and pruning follow.
  try {
    write_file_atomic((root / kLatestFile).string(), name + "\n");
    fsync_directory(root.string());
  } catch (const UserError& e) {
    fail("step {}: checkpoint {} is complete, but checkpoints/latest could not be updated: {}", progress.step,
         final_dir.string(), e.what());
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  spdlog::info("checkpoint {}: {:.1f} MB in {:.2f}s ({:.0f} MB/s)", final_dir.string(), total_bytes / 1e6, seconds,
               total_bytes / 1e6 / std::max(seconds, 1e-9));
  prune_checkpoints(run_dir, state.config.checkpoint.keep, state.config.checkpoint.milestone_every);
  return final_dir.string();
}

CheckpointCheck verify_checkpoint(const std::string& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return rejected(fs::exists(dir, ec) ? "not a folder" : "no such folder");
  const fs::path trainer_path = fs::path(dir) / kTrainerFile;
  if (!fs::exists(trainer_path, ec))
    return rejected("trainer.json is missing (the checkpoint was never finished, or the file was removed)");
  json trainer;
  try {
    trainer = read_json_file(trainer_path.string());
  } catch (const UserError& e) {
    return rejected(fmt::format("trainer.json is unreadable: {}", e.what()));
  }
  if (!trainer.is_object() || trainer.value("format", json()) != kFormat)
    return rejected("trainer.json is unreadable: not an l3c checkpoint description (no \"format\": \"l3c-checkpoint\")");
  if (!trainer.contains("self_sha256") || !trainer["self_sha256"].is_string())
    return rejected("trainer.json is unreadable: it carries no self_sha256 checksum");
  if (trainer["self_sha256"].get<std::string>() != self_checksum(trainer))
    return rejected("trainer.json: checksum mismatch (self_sha256 does not match its contents: the file was modified "
                    "or corrupted)");
  if (!trainer.value("version", json()).is_number_integer() || trainer["version"].get<int64_t>() > kVersion)
    return rejected(fmt::format("trainer.json: format version {} is newer than this l3c reads ({})",
                                trainer.value("version", json()).dump(), kVersion));
  const json& files = trainer.value("files", json());
  for (const char* required : {kModelFile, kOptimizerFile})
    if (!files.is_object() || !files.contains(required))
      return rejected(fmt::format("trainer.json lists no {}", required), trainer);
  for (const auto& [file, entry] : files.items()) {
    if (file.empty() || file.find('/') != std::string::npos || file == "." || file == "..")
      return rejected(fmt::format("trainer.json lists a file outside the checkpoint folder: {}", file), trainer);
    const fs::path path = fs::path(dir) / file;
    if (!entry.is_object() || !entry.value("bytes", json()).is_number_unsigned() ||
        !entry.value("sha256", json()).is_string())
      return rejected(fmt::format("trainer.json: malformed entry for {}", file), trainer);
    const uint64_t bytes = entry["bytes"].get<uint64_t>();
    const std::string sha = entry["sha256"].get<std::string>();
    if (!fs::exists(path, ec)) return rejected(fmt::format("{} is missing", file), trainer);
    const uint64_t size = fs::file_size(path, ec);
    if (ec) return rejected(fmt::format("{}: cannot read its size: {}", file, ec.message()), trainer);
    if (size < bytes)
      return rejected(fmt::format("{} is truncated: {} bytes, trainer.json records {}", file, size, bytes), trainer);
    if (size > bytes)
      return rejected(fmt::format("{} has {} bytes, trainer.json records {}", file, size, bytes), trainer);
    std::string actual;
    try {
      actual = sha256_file(path.string());
    } catch (const UserError& e) {
      return rejected(e.what(), trainer);
    }
    if (actual != sha)
      return rejected(fmt::format("{}: sha256 mismatch (the file is corrupted): trainer.json records {}, the file has {}",
                                  file, short_hash(sha), short_hash(actual)),
                      trainer);
  }
  return CheckpointCheck{true, "", std::move(trainer)};
}

std::optional<std::string> find_resume_checkpoint(const std::string& run_dir, std::vector<std::string>* passed_over,
                                                  CheckpointCheck* found) {
  const fs::path root = checkpoints_dir(run_dir);
  std::string hint;
  std::error_code ec;
  if (fs::exists(root / kLatestFile, ec)) {
    try {
      hint = read_file_bytes((root / kLatestFile).string());
      hint.erase(hint.find_last_not_of(" \n\r\t") + 1);
    } catch (const UserError&) {
      hint.clear();
    }
  }
  std::vector<int64_t> steps = checkpoint_steps(run_dir);
  for (auto it = steps.rbegin(); it != steps.rend(); ++it) {
    const std::string name = checkpoint_name(*it);
    const std::string path = (root / name).string();
    CheckpointCheck check = verify_checkpoint(path);
    if (check.ok) {
      if (!hint.empty() && hint != name)
        spdlog::info("resume: checkpoints/latest names {}; {} is the newest checkpoint that verifies", hint, name);
      if (found) *found = std::move(check);
      return path;
    }
    spdlog::warn("resume: passing over {}: {}", path, check.reason);
    if (passed_over) passed_over->push_back(fmt::format("{}: {}", name, check.reason));
  }
  return std::nullopt;
}

void remove_stale_temporaries(const std::string& run_dir) {
  const fs::path root = checkpoints_dir(run_dir);
  std::error_code ec;
  if (!fs::is_directory(root, ec)) return;
  std::vector<fs::path> stale;
  for (const fs::directory_entry& entry : fs::directory_iterator(root, ec))
    if (entry.path().filename().string().rfind(kTempPrefix, 0) == 0) stale.push_back(entry.path());
  for (const fs::path& path : stale) {
    spdlog::warn("resume: removing {}, left by a checkpoint write that did not finish", path.string());
    fs::remove_all(path, ec);
  }
}

void prune_checkpoints(const std::string& run_dir, int64_t keep, int64_t milestone_every) {
  const std::vector<int64_t> steps = checkpoint_steps(run_dir);
  const size_t newest = steps.size() > static_cast<size_t>(keep) ? steps.size() - static_cast<size_t>(keep) : 0;
  for (size_t i = 0; i < newest; ++i) {
    if (milestone_every > 0 && steps[i] % milestone_every == 0) continue;
    const fs::path path = fs::path(checkpoints_dir(run_dir)) / checkpoint_name(steps[i]);
    std::error_code ec;
    fs::remove_all(path, ec);
    if (ec) spdlog::warn("checkpoint: could not remove {}: {}", path.string(), ec.message());
  }
}

TrainerProgress checkpoint_progress(const json& trainer) {
  // Each count must be an integer in [least, limits::kMaxSteps]: a fraction would be truncated, a negative step
  // would start the loop before the first window.
  auto count = [&](const json& object, const char* key, const char* name, int64_t least) {
    const auto it = object.is_object() ? object.find(key) : object.end();
    if (it == object.end()) fail("trainer.json: {}: missing", name);
    if (!it->is_number_integer() || (!it->is_number_unsigned() && it->get<int64_t>() < least) ||
        (it->is_number_unsigned() && it->get<uint64_t>() > static_cast<uint64_t>(limits::kMaxSteps) * 1024))
      fail("trainer.json: {}: expected an integer >= {}, got {}", name, least, it->dump());
    return it->get<int64_t>();
  };
  if (!trainer.is_object()) fail("trainer.json: expected a JSON object");
  TrainerProgress p;
  p.step = count(trainer, "step", "step", 0);
  p.tokens_seen = count(trainer, "tokens_seen", "tokens_seen", 0);
  p.skipped_steps = count(trainer, "skipped_steps", "skipped_steps", 0);
  p.data_position = count(trainer.value("data", json()), "position", "data.position", 0);
  p.threads = count(trainer, "threads", "threads", 0);
  p.world_size = count(trainer, "world_size", "world_size", 1);
  return p;
}

Config checkpoint_config(const json& trainer, const std::string& dir) {
  if (!trainer.contains("config")) fail("{}/trainer.json: no config", dir);
  try {
    return config_from_json(trainer["config"]);
  } catch (const UserError& e) {
    fail("{}/trainer.json: the saved config does not load: {}", dir, e.what());
  }
}

void load_checkpoint_state(const std::string& dir, Llama& model, FlatBuffer& params, AdamW& optimizer) {
  const SafetensorsFile weights((fs::path(dir) / kModelFile).string());
  load_model_state(weights, model, params);
  const SafetensorsFile moments((fs::path(dir) / kOptimizerFile).string());
  // Moments on the GPU are read into host buffers first, then copied over.
  for (const auto& [buffer, prefix] : {std::pair<FlatBuffer*, const char*>{&optimizer.first_moment(), "exp_avg."},
                                       {&optimizer.second_moment(), "exp_avg_sq."}}) {
    if (buffer->device() == Device::CPU) {
      load_params(moments, model.registry(), *buffer, ExtraTensors::Ignore, prefix);
    } else {
      FlatBuffer host(buffer->numel(), buffer->dtype());
      load_params(moments, model.registry(), host, ExtraTensors::Ignore, prefix);
      ops::copy(buffer->all(), host.all());
    }
  }
  const auto step = moments.metadata().find("step");
  if (step == moments.metadata().end()) fail("{}: no AdamW step in the metadata", moments.path());
  const std::string& text = step->second;
  if (text.empty() || text.size() > 15 || !std::all_of(text.begin(), text.end(), [](char c) { return c >= '0' && c <= '9'; }))
    fail("{}: malformed AdamW step '{}' in the metadata (expected a count of steps)", moments.path(), text);
  optimizer.set_steps_taken(std::stoll(text));
}

std::string init_from_weights(const std::string& dir) {
  if (fs::exists(fs::path(dir) / "trainer.json")) {
    const CheckpointCheck check = verify_checkpoint(dir);
    if (!check.ok) fail("--init-from {}: the checkpoint cannot be loaded: {}", dir, check.reason);
  } else if (!fs::exists(fs::path(dir) / kModelFile)) {
    fail("--init-from {}: neither a checkpoint (trainer.json) nor a model folder ({})", dir, kModelFile);
  }
  return (fs::path(dir) / kModelFile).string();
}

void init_from_checkpoint(const std::string& dir, Llama& model, FlatBuffer& params) {
  const SafetensorsFile file(init_from_weights(dir));
  std::vector<std::string> loaded, fresh;
  for (const ParamInfo& p : model.registry().params()) {
    if (!file.contains(p.name)) {
      fresh.push_back(p.name);
      continue;
    }
    load_tensor(file, p.name, params.view(p));
    loaded.push_back(p.name);
  }
  for (const L3Layer& layer : model.l3_layers()) {
    bool has_tables = false;
    for (const std::string& name : loaded) has_tables = has_tables || name.rfind(layer.name(""), 0) == 0;
    if (!has_tables) continue;
    const std::string name = layer.alloc_name();
    if (!file.contains(name)) fail("{}: holds the tables of L3 layer {} but not their allocation {}", file.path(), layer.index(), name);
    const Tensor& t = file.get(name);
    if (t.dtype != DType::I32 || t.ndim != 1) fail("{}: {} must be a 1-D I32 tensor", file.path(), name);
    model.set_l3_allocation(layer.index(), std::vector<int32_t>(t.ptr<int32_t>(), t.ptr<int32_t>() + t.numel()),
                            fmt::format("{}: {}", file.path(), name));
    spdlog::info("init-from: L3 layer {} takes its allocation from the checkpoint, with its tables", layer.index());
  }
  std::vector<std::string> unused;
  for (const auto& [name, tensor] : file.tensors())
    if (!model.registry().contains(name) && name.find(".alloc") == std::string::npos) unused.push_back(name);
  auto list = [](const std::vector<std::string>& names) {
    std::string out;
    for (size_t i = 0; i < names.size() && i < 8; ++i) out += (i ? ", " : "") + names[i];
    return names.size() > 8 ? out + fmt::format(", ... ({} in all)", names.size()) : out;
  };
  spdlog::info("init-from {}: {} parameters loaded{}{}", dir, loaded.size(),
               fresh.empty() ? std::string() : fmt::format("; {} freshly initialised: {}", fresh.size(), list(fresh)),
               unused.empty() ? std::string() : fmt::format("; {} checkpoint tensors unused: {}", unused.size(), list(unused)));
  if (loaded.empty()) fail("--init-from {}: the checkpoint holds none of this model's parameters", dir);
}

const std::vector<std::string>& resume_changeable_keys() {
  // A key ending in '.' covers every key under it.
  static const std::vector<std::string> keys = {
      "train.steps",    "train.min_lr",       "train.decay_fraction", "train.on_nonfinite", "train.threads",
      "eval.",          "checkpoint.",        "data.val",             "data.tokenizer",     "run.dir",
      "model.l3.allocation.",  // the allocation is part of the checkpoint; its source no longer matters
      "train.zero",     "dist.",  // how ranks share the work: the checkpoint's format is the same for any
  };
  return keys;
}

std::map<std::string, std::pair<json, json>> config_differences(const Config& a, const Config& b) {
  // Both configs flattened to "section.key" -> value.
  std::map<std::string, json> before, after;
  std::function<void(const json&, const std::string&, std::map<std::string, json>&)> flatten =
      [&](const json& j, const std::string& prefix, std::map<std::string, json>& out) {
        for (const auto& [key, value] : j.items()) {
          const std::string path = prefix.empty() ? key : prefix + "." + key;
          if (value.is_object()) flatten(value, path, out);
          else out[path] = value;
        }
      };
  flatten(json(config_to_json(a)), "", before);
  flatten(json(config_to_json(b)), "", after);
  std::map<std::string, std::pair<json, json>> changed;
  for (const auto& [key, value] : before)
    if (!after.count(key) || after[key] != value) changed[key] = {value, after.count(key) ? after[key] : json()};
  for (const auto& [key, value] : after)
    if (!before.count(key)) changed[key] = {json(), value};
  return changed;
}

std::string describe_difference(const std::string& key, const std::pair<json, json>& values) {
  return fmt::format("{}: {} -> {}", key, values.first.is_null() ? "(absent)" : values.first.dump(),
                     values.second.is_null() ? "(absent)" : values.second.dump());
}

std::vector<std::string> check_resume_config(const Config& saved, const Config& now) {
  const std::map<std::string, std::pair<json, json>> changed = config_differences(saved, now);
  auto changeable = [](const std::string& key) {
    for (const std::string& allowed : resume_changeable_keys())
      if (allowed.back() == '.' ? key.rfind(allowed, 0) == 0 : key == allowed) return true;
    return false;
  };
  std::vector<std::string> notes, refused;
  for (const auto& [key, values] : changed) {
    const std::string line = describe_difference(key, values);
    (changeable(key) ? notes : refused).push_back(line);
  }
  if (!refused.empty()) {
    std::string list;
    for (const std::string& line : refused) list += "\n  " + line;
    std::string allowed;
    for (const std::string& key : resume_changeable_keys()) allowed += (allowed.empty() ? "" : ", ") + key + (key.back() == '.' ? "*" : "");
    fail("the config differs from the checkpoint's in keys that cannot change on resume:{}\n(keys that may change: {}; "
         "to start a new run from these weights use --init-from)",
         list, allowed);
  }
  return notes;
}

}  // namespace l3c
