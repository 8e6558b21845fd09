// Model weights on disk: `model.safetensors` with MODEL.md names beside the resolved `config.json`.
// A folder holding both is what `l3c eval --checkpoint` and `l3c generate --checkpoint` accept.
#pragma once
#include <memory>
#include <string>

#include "core/config.h"
#include "model/llama.h"
#include "model/params.h"
#include "train/safetensors.h"

namespace l3c {

// Writes params under their registry names (atomically), with the resolved config in the metadata, and
// each L3 layer's allocation as model.l3.{j}.alloc (I32, (V): the rows per token id).
void save_model(const std::string& path, const Llama& model, const FlatBuffer& params, const Config& config);

// What load_params does with tensors of the file that are not parameters of the model.
enum class ExtraTensors { Reject, Ignore };

// Copies every registry parameter from a safetensors file into params, converting f32/f64 as needed.
// A missing tensor, a shape mismatch or (unless ignored) an extra tensor is a UserError naming it.
void load_params(const SafetensorsFile& file, const ParamRegistry& registry, FlatBuffer& params,
                 ExtraTensors extra = ExtraTensors::Reject);

// Loads the parameters and the L3 allocations (model.l3.{j}.alloc, checked against the config) of
// `model` from a file written by save_model. Extra tensors are rejected unless told otherwise.
void load_model_state(const SafetensorsFile& file, Llama& model, FlatBuffer& params,
                      ExtraTensors extra = ExtraTensors::Reject);

struct LoadedModel {
  Config config;
  std::unique_ptr<Llama> model;
  FlatBuffer params;
};

// Reads DIR/config.json and DIR/model.safetensors.
LoadedModel load_model_dir(const std::string& dir);

// Writes the resolved config as pretty JSON (atomically).
void write_config_json(const std::string& path, const Config& config);

}  // namespace l3c
