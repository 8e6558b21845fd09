// Finding and loading the model of a run, checkpoint or model folder.
#include "runtime/model_dir.h"

#include <filesystem>

#include "core/errors.h"
#include "core/safetensors.h"
#include "runtime/checkpoint.h"
#include "runtime/memory.h"
#include "runtime/model_io.h"

namespace l3c {

ModelDir resolve_model_dir(const std::string& dir) {
  namespace fs = std::filesystem;
  if (!fs::is_directory(dir)) fail("--checkpoint {}: not a folder", dir);
  const std::string config_path = (fs::path(dir) / "config.json").string();
  ModelDir found;
  found.weights_path = (fs::path(dir) / "model.safetensors").string();
  if (fs::exists(fs::path(dir) / "trainer.json")) {
    // A checkpoint folder: every byte is checked before anything is loaded.
    const CheckpointCheck check = verify_checkpoint(dir);
    if (!check.ok) fail("checkpoint {} cannot be loaded: {}", dir, check.reason);
    found.config = checkpoint_config(check.trainer, dir);
  } else {
    const char* holds = "a run folder holds config.json and model.safetensors; a checkpoint folder trainer.json too";
    if (!fs::exists(config_path)) fail("{}: missing ({})", config_path, holds);
    if (!fs::exists(found.weights_path)) fail("{}: missing ({})", found.weights_path, holds);
    found.config = config_from_json(read_json_file(config_path));
  }
  return found;
}

LoadedModel load_model_dir(const std::string& dir) {
  ModelDir found = resolve_model_dir(dir);
  LoadedModel loaded;
  loaded.config = std::move(found.config);
  loaded.model = std::make_unique<Llama>(loaded.config.model);
  const DType dtype = loaded.config.train.dtype;  // f32 or f64, as the run trained on the CPU
  // The config comes from the folder: its weights must fit before they are allocated.
  MemoryEstimate weights;
  weights.params = static_cast<size_t>(loaded.model->registry().total()) * dtype_size(dtype);
  check_fits_host_memory(weights);
  loaded.params = FlatBuffer(loaded.model->registry().total(), dtype);
  load_model_state(SafetensorsFile(found.weights_path), *loaded.model, loaded.params);
  return loaded;
}

}  // namespace l3c
