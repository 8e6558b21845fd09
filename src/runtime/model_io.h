// Model weights on disk: `model.safetensors` with MODEL.md names beside the resolved `config.json`, and the
// parameters and L3 allocations read back from such a file. The folders that hold a model (a run, a checkpoint, an
// imported model) are src/runtime/model_dir.h.
#pragma once
#include <map>
#include <memory>
#include <string>

#include "core/config.h"
#include "core/safetensors.h"
#include "model/llama.h"
#include "model/params.h"

namespace l3c {

// Writes params under their registry names (atomically), with the resolved config in the metadata, and
// each L3 layer's allocation as model.l3.{j}.alloc (I32, (V): the rows per token id).
void save_model(const std::string& path, const Llama& model, const FlatBuffer& params, const Config& config);

// What save_model writes: the tensors (views of params and of the allocations) and the metadata.
std::vector<NamedTensor> model_tensors(const Llama& model, const FlatBuffer& params);
std::map<std::string, std::string> model_metadata(const Config& config);

// What load_params does with tensors of the file that are not parameters of the model.
enum class ExtraTensors { Reject, Ignore };

// Copies tensor `name` of the file into dst (same shape; f32 or f64, converted as needed). UserError naming
// the file and tensor when it is absent or does not fit.
void load_tensor(const SafetensorsFile& file, const std::string& name, const Tensor& dst);

// Copies every registry parameter from a safetensors file into params, converting f32/f64 as needed;
// the tensor of parameter p is named prefix + p.name ("exp_avg." for an AdamW moment).
// A missing tensor, a shape mismatch or (unless ignored) an extra tensor is a UserError naming it.
void load_params(const SafetensorsFile& file, const ParamRegistry& registry, FlatBuffer& params,
                 ExtraTensors extra = ExtraTensors::Reject, const std::string& prefix = "");

// Loads the parameters and the L3 allocations (model.l3.{j}.alloc, checked against the config) of
// `model` from a file written by save_model. Extra tensors are rejected unless told otherwise.
void load_model_state(const SafetensorsFile& file, Llama& model, FlatBuffer& params,
                      ExtraTensors extra = ExtraTensors::Reject);

// Sets every L3 layer's allocation of `model` from the file's model.l3.{j}.alloc tensors (UserError naming the file
// and tensor when one is missing or malformed).
void load_l3_allocations(const SafetensorsFile& file, Llama& model);

// Writes the resolved config as pretty JSON (atomically).
void write_config_json(const std::string& path, const Config& config);

}  // namespace l3c
