// The folders a trained model is read from: a run folder or a model folder (`config.json` beside
// `model.safetensors`, as training and `l3c import hf` write them) and a checkpoint folder (RUN/checkpoints/step_*,
// verified first, the config from its trainer.json). This is what `l3c eval --checkpoint`, `l3c generate
// --checkpoint`, `export` and `bench --generate` accept.
#pragma once
#include <memory>
#include <string>

#include "core/config.h"
#include "model/llama.h"
#include "model/params.h"

namespace l3c {

struct LoadedModel {
  Config config;
  std::unique_ptr<Llama> model;
  FlatBuffer params;
};

// The config and weights file of a run folder (DIR/config.json, DIR/model.safetensors) or of a checkpoint
// folder (RUN/checkpoints/step_*: verified first, the config from its trainer.json). UserError naming what is
// missing or corrupt.
struct ModelDir {
  Config config;
  std::string weights_path;
};
ModelDir resolve_model_dir(const std::string& dir);

// Reads the model of resolve_model_dir(dir) into memory.
LoadedModel load_model_dir(const std::string& dir);

}  // namespace l3c
