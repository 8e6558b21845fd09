// Config: JSON <-> the typed structs of config.h through one schema table (`schema()` below).
// Each field is declared once: its dotted JSON path ("train.lr", "model.l3.allocation.method"), the
// struct member it fills (whose C++ type is the field's JSON type: integer, number, bool, string, a list, or a
// choice: an enum spelled by the names of ChoiceNames<E>), and its rule (required, bounds, allowed choices). The objects of the JSON are the
// path prefixes of the fields; an object listed in `optional_objects()` ("model.l3") may be absent as a
// whole, and then its fields are neither read, required, checked nor written back. Reading, unknown-key
// and range checks, "--set" overrides and config_to_json all walk that table; nothing is written per field.
// Defaults are the member initializers in config.h, so they exist in one place only.
// Checks run in this order, so the first error is the most useful one: unknown keys, value types,
// required fields and per-field rules (schema order), then the rules that relate several fields.
#include "core/config.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <optional>
#include <span>
#include <type_traits>
#include <utility>
#include <variant>

#include "core/checked.h"
#include "core/errors.h"
#include "core/json_input.h"
#include "core/limits.h"

namespace l3c {
namespace {

using json = nlohmann::json;
namespace fs = std::filesystem;

using IntList = std::vector<int64_t>;
using StringList = std::vector<std::string>;

// A choice field's enum, seen through its names: get and set the value as an index into `names`.
struct ChoiceSlot {
  void* target;
  std::span<const std::string_view> names;
  size_t (*get)(const void* target);
  void (*set)(void* target, size_t index);

  std::string_view name() const { return names[get(target)]; }
};

template <typename E>
ChoiceSlot choice_slot(E* target) {
  return {target, ChoiceNames<E>::names, [](const void* t) { return static_cast<size_t>(*static_cast<const E*>(t)); },
          [](void* t, size_t index) { *static_cast<E*>(t) = static_cast<E>(index); }};
}

// Where a field's value lives inside a Config. The alternative held is the field's type:
// int64_t: integer, uint64_t: non-negative integer, double: number, bool: true/false, string,
// IntList: a JSON array of integers, StringList: a JSON array of strings, LayerSelection: "all" or a JSON
// array of layer indices, ChoiceSlot: one of a choice's names.
using Slot = std::variant<int64_t*, uint64_t*, double*, bool*, std::string*, IntList*, StringList*, LayerSelection*,
                          ChoiceSlot>;

template <typename T>
Slot slot_of(T* member) {
  if constexpr (std::is_enum_v<T>) return choice_slot(member);
  else return member;
}

// What a field's value must satisfy beyond its type. Bounds apply to numbers and to every entry of a
// list; one_of to choices (the names allowed, when not all of them are); non_empty to strings and lists. `hint` is
// appended to a broken rule's message.
struct Rule {
  bool required = false;          // absent from the JSON is an error (the struct default is not valid)
  std::optional<double> min = {};  // lower bound, inclusive unless min_open
  bool min_open = false;
  std::optional<double> max = {};  // upper bound, inclusive unless max_open
  bool max_open = false;
  std::optional<double> limit = {};  // upper bound of a size (src/core/limits.h), inclusive; named as a limit
  std::vector<std::string> one_of = {};
  bool non_empty = false;
  std::string hint = {};
};

struct Field {
  const char* path_text;  // "train.lr": the JSON path, also the name in messages
  Slot (*slot)(Config&);
  Rule rule;

  std::string path() const { return path_text; }
};

// One schema row: field<&Config::train, &TrainConfig::lr>("train.lr", {.min = 0, .min_open = true}); the
// member pointers lead from Config to the value (as many as the path has levels).
template <auto... Members>
Field field(const char* path, Rule rule = {}) {
  return Field{path, [](Config& c) -> Slot { return slot_of(&(c .* ... .* Members)); }, std::move(rule)};
}

// Objects that may be absent as a whole, and how to tell from a typed Config whether one is present.
struct OptionalObject {
  const char* path;
  bool (*present)(const Config&);
};

const std::vector<OptionalObject>& optional_objects() {
  static const std::vector<OptionalObject> objects = {
      {"model.l3", [](const Config& c) { return c.model.l3.enabled(); }},
      {"model.moe", [](const Config& c) { return c.model.moe.enabled(); }},
  };
  return objects;
}

// Upper bounds of the sizes a config gives (src/core/limits.h), as the schema's rules take them.
constexpr double kVocab = static_cast<double>(limits::kMaxVocabSize);
constexpr double kWidth = static_cast<double>(limits::kMaxWidth);
constexpr double kLayers = static_cast<double>(limits::kMaxLayers);
constexpr double kExperts = static_cast<double>(limits::kMaxExperts);
constexpr double kSeqLen = static_cast<double>(limits::kMaxSeqLen);
constexpr double kMicroBatch = static_cast<double>(limits::kMaxMicroBatch);
constexpr double kSteps = static_cast<double>(limits::kMaxSteps);
// A thread count above the machine's limit is refused where the threads start (limits::checked_threads), so
// that a config saved on a larger machine still loads here; this only bounds the number.
constexpr double kThreads = 1 << 20;

// The schema: sections and keys in the order config_to_json writes them.
const std::vector<Field>& schema() {
  using C = Config;
  static const std::vector<Field> fields = {
      field<&C::model, &ModelConfig::vocab_size>("model.vocab_size", {.required = true, .min = 1, .limit = kVocab}),
      field<&C::model, &ModelConfig::d_model>("model.d_model", {.required = true, .min = 1, .limit = kWidth}),
      field<&C::model, &ModelConfig::n_layers>("model.n_layers", {.required = true, .min = 1, .limit = kLayers}),
      field<&C::model, &ModelConfig::n_heads>("model.n_heads", {.required = true, .min = 1, .limit = kWidth}),
      field<&C::model, &ModelConfig::n_kv_heads>("model.n_kv_heads", {.min = 0, .limit = kWidth}),  // 0: n_heads
      field<&C::model, &ModelConfig::ffn_hidden>("model.ffn_hidden", {.required = true, .min = 1, .limit = kWidth}),
      field<&C::model, &ModelConfig::rope_theta>("model.rope_theta", {.min = 0, .min_open = true}),
      field<&C::model, &ModelConfig::norm_eps>("model.norm_eps", {.min = 0, .min_open = true}),
      field<&C::model, &ModelConfig::tie_embeddings>("model.tie_embeddings"),
      field<&C::model, &ModelConfig::init_std>("model.init_std", {.min = 0, .min_open = true}),
      field<&C::model, &ModelConfig::l3, &L3Config::after_layers>("model.l3.after_layers",
                                                                  {.required = true, .min = 0, .limit = kLayers, .non_empty = true}),
      field<&C::model, &ModelConfig::l3, &L3Config::v>("model.l3.v", {.required = true, .min = 1}),
      field<&C::model, &ModelConfig::l3, &L3Config::k>("model.l3.k", {.required = true, .min = 1, .limit = kWidth}),
      field<&C::model, &ModelConfig::l3, &L3Config::d_emb>("model.l3.d_emb", {.min = 0, .limit = kWidth}),  // 0: derived
      field<&C::model, &ModelConfig::l3, &L3Config::d_up>("model.l3.d_up", {.min = 0, .limit = kWidth}),    // 0: derived
      field<&C::model, &ModelConfig::l3, &L3Config::tie_kv>("model.l3.tie_kv"),
      field<&C::model, &ModelConfig::l3, &L3Config::residual>("model.l3.residual"),
      field<&C::model, &ModelConfig::l3, &L3Config::init_std>("model.l3.init_std", {.min = 0, .min_open = true}),
      field<&C::model, &ModelConfig::l3, &L3Config::mix_init>("model.l3.mix_init"),
      field<&C::model, &ModelConfig::l3, &L3Config::allocation, &L3AllocationConfig::method>("model.l3.allocation.method"),
      field<&C::model, &ModelConfig::l3, &L3Config::allocation, &L3AllocationConfig::data>("model.l3.allocation.data"),
      field<&C::model, &ModelConfig::l3, &L3Config::allocation, &L3AllocationConfig::path>("model.l3.allocation.path"),
      field<&C::model, &ModelConfig::l3, &L3Config::allocation, &L3AllocationConfig::eot>(
          "model.l3.allocation.eot", {.min = -1, .limit = kVocab, .hint = "-1: the shards' manifest.json says, else none"}),
      field<&C::model, &ModelConfig::moe, &MoeConfig::layers>("model.moe.layers",
                                                              {.required = true, .min = 0, .limit = kLayers, .non_empty = true}),
      field<&C::model, &ModelConfig::moe, &MoeConfig::experts>("model.moe.experts", {.required = true, .min = 1, .limit = kExperts}),
      field<&C::model, &ModelConfig::moe, &MoeConfig::top_k>("model.moe.top_k", {.min = 1, .limit = kExperts}),
      field<&C::model, &ModelConfig::moe, &MoeConfig::expert_hidden>("model.moe.expert_hidden",
                                                                     {.required = true, .min = 1, .limit = kWidth}),
      field<&C::model, &ModelConfig::moe, &MoeConfig::shared_expert_hidden>("model.moe.shared_expert_hidden",
                                                                            {.min = 0, .limit = kWidth}),
      field<&C::model, &ModelConfig::moe, &MoeConfig::normalize_topk>("model.moe.normalize_topk"),
      field<&C::model, &ModelConfig::moe, &MoeConfig::aux_loss>("model.moe.aux_loss", {.min = 0}),
      field<&C::model, &ModelConfig::moe, &MoeConfig::z_loss>("model.moe.z_loss", {.min = 0}),
      field<&C::model, &ModelConfig::moe, &MoeConfig::init_std>("model.moe.init_std",
                                                                {.min = 0, .hint = "0: model.init_std"}),

      field<&C::data, &DataConfig::train>("data.train", {.required = true, .non_empty = true}),
      field<&C::data, &DataConfig::val>("data.val"),
      field<&C::data, &DataConfig::seq_len>("data.seq_len", {.required = true, .min = 1, .limit = kSeqLen}),
      field<&C::data, &DataConfig::shuffle>("data.shuffle"),
      field<&C::data, &DataConfig::tokenizer>("data.tokenizer", {.non_empty = true}),

      field<&C::train, &TrainConfig::steps>("train.steps", {.required = true, .min = 1, .limit = kSteps}),
      field<&C::train, &TrainConfig::batch_tokens>("train.batch_tokens", {.min = 0, .limit = kSteps}),  // 0: one micro-batch
      field<&C::train, &TrainConfig::micro_batch>("train.micro_batch", {.min = 1, .limit = kMicroBatch}),
      field<&C::train, &TrainConfig::lr>("train.lr", {.min = 0, .min_open = true}),
      field<&C::train, &TrainConfig::min_lr>("train.min_lr", {.min = 0}),
      field<&C::train, &TrainConfig::warmup_steps>("train.warmup_steps", {.min = 0, .limit = kSteps}),
      field<&C::train, &TrainConfig::schedule>("train.schedule"),
      field<&C::train, &TrainConfig::decay_fraction>("train.decay_fraction", {.min = 0, .max = 1}),
      field<&C::train, &TrainConfig::weight_decay>("train.weight_decay", {.min = 0}),
      field<&C::train, &TrainConfig::table_lr_scale>("train.table_lr_scale", {.min = 0, .min_open = true}),
      field<&C::train, &TrainConfig::table_weight_decay>("train.table_weight_decay",
                                                          {.min = -1, .hint = "-1: train.weight_decay"}),
      field<&C::train, &TrainConfig::beta1>("train.beta1", {.min = 0, .max = 1, .max_open = true}),
      field<&C::train, &TrainConfig::beta2>("train.beta2", {.min = 0, .max = 1, .max_open = true}),
      field<&C::train, &TrainConfig::eps>("train.eps", {.min = 0, .min_open = true}),
      field<&C::train, &TrainConfig::grad_clip>("train.grad_clip", {.min = 0}),  // 0: no clipping
      field<&C::train, &TrainConfig::seed>("train.seed"),
      field<&C::train, &TrainConfig::threads>("train.threads", {.min = 0, .limit = kThreads}),  // 0: all cores
      // Whether "cuda" can run here is checked when a run starts (src/runtime/device.h), not when the config is read.
      field<&C::train, &TrainConfig::device>("train.device"),
      field<&C::train, &TrainConfig::dtype>("train.dtype", {.one_of = {"f32", "f64"}}),
      field<&C::train, &TrainConfig::on_nonfinite>("train.on_nonfinite"),
      field<&C::train, &TrainConfig::trainable>("train.trainable"),  // empty: everything trains
      field<&C::train, &TrainConfig::precision>("train.precision"),
      field<&C::train, &TrainConfig::recompute>("train.recompute"),
      field<&C::train, &TrainConfig::zero>("train.zero", {.min = 0, .max = 1}),

      field<&C::eval, &EvalConfig::every>("eval.every", {.min = 0, .limit = kSteps}),
      field<&C::eval, &EvalConfig::batches>("eval.batches", {.min = 1, .limit = kSteps}),
      field<&C::eval, &EvalConfig::tasks>("eval.tasks"),  // empty: none
      field<&C::eval, &EvalConfig::text>("eval.text"),    // empty: none
      field<&C::eval, &EvalConfig::tasks_dir>("eval.tasks_dir", {.non_empty = true}),
      field<&C::eval, &EvalConfig::limit>("eval.limit", {.min = 0}),
      field<&C::eval, &EvalConfig::text_max_bytes>("eval.text_max_bytes", {.min = 0}),

      field<&C::checkpoint, &CheckpointConfig::every>("checkpoint.every", {.min = 0, .limit = kSteps}),
      field<&C::checkpoint, &CheckpointConfig::keep>("checkpoint.keep", {.min = 1, .limit = kSteps}),
      field<&C::checkpoint, &CheckpointConfig::milestone_every>("checkpoint.milestone_every", {.min = 0, .limit = kSteps}),

      field<&C::dist, &DistConfig::timeout>("dist.timeout", {.min = 0, .min_open = true}),
      field<&C::dist, &DistConfig::bucket_mb>("dist.bucket_mb", {.min = 1}),
      field<&C::dist, &DistConfig::row_sparse>("dist.row_sparse"),
      field<&C::dist, &DistConfig::nccl_bootstrap>("dist.nccl_bootstrap"),
      field<&C::dist, &DistConfig::shared_dir>("dist.shared_dir"),

      field<&C::run, &RunConfig::dir>("run.dir", {.non_empty = true}),
  };
  return fields;
}

// Top-level keys that are not sections.
constexpr const char* kExtendsKey = "extends";
constexpr const char* kDescriptionKey = "description";

// "model.l3.v" -> {"model", "l3", "v"}.
std::vector<std::string> split_path(const std::string& path) {
  std::vector<std::string> parts;
  size_t begin = 0;
  while (true) {
    const size_t dot = path.find('.', begin);
    parts.push_back(path.substr(begin, dot == std::string::npos ? std::string::npos : dot - begin));
    if (dot == std::string::npos) return parts;
    begin = dot + 1;
  }
}

// Whether `path` lies inside the object `object` ("" is the top level).
bool inside(const std::string& path, const std::string& object) {
  return object.empty() || (path.size() > object.size() && path.compare(0, object.size(), object) == 0 &&
                            path[object.size()] == '.');
}

// The names directly inside an object ("" is the top level), in schema order.
std::vector<std::string> children(const std::string& object) {
  std::vector<std::string> names;
  for (const Field& f : schema()) {
    const std::string path = f.path();
    if (!inside(path, object)) continue;
    const std::string rest = object.empty() ? path : path.substr(object.size() + 1);
    const std::string name = rest.substr(0, rest.find('.'));
    if (std::find(names.begin(), names.end(), name) == names.end()) names.push_back(name);
  }
  return names;
}

// An object is a proper prefix of some field's path.
bool is_object(const std::string& path) {
  for (const Field& f : schema())
    if (inside(f.path(), path)) return true;
  return false;
}

std::vector<std::string> section_names() { return children(""); }

bool is_section(const std::string& name) { return name.find('.') == std::string::npos && is_object(name); }

const Field* find_field(const std::string& path) {
  for (const Field& f : schema())
    if (f.path() == path) return &f;
  return nullptr;
}

std::string join(const std::vector<std::string>& items) {
  std::string out;
  for (const std::string& item : items) out += (out.empty() ? "" : ", ") + item;
  return out;
}

// A JSON value as an error message shows it: numbers bare, others with their type ("string \"abc\"").
// JSON text for an error message: never throws (a string that is not valid UTF-8 is shown with U+FFFD).
std::string dump_for_message(const json& v) { return v.dump(-1, ' ', false, json::error_handler_t::replace); }

std::string describe(const json& v) {
  if (v.is_number()) return dump_for_message(v);
  if (v.is_null()) return "null";
  std::string text = dump_for_message(v);
  if (text.size() > 60) text = text.substr(0, 57) + "...";
  return fmt::format("{} {}", v.type_name(), text);
}

// The value at a dotted path in j, or null when it (or an object on the way) is absent.
const json* lookup(const json& j, const std::string& path) {
  const json* node = &j;
  for (const std::string& part : split_path(path)) {
    if (!node->is_object()) return nullptr;
    auto it = node->find(part);
    if (it == node->end()) return nullptr;
    node = &*it;
  }
  return node;
}
const json* lookup(const json& j, const Field& f) { return lookup(j, f.path()); }

// A field counts when every optional object around it is present (in the JSON, or in a typed config).
bool active_in_json(const json& j, const Field& f) {
  for (const OptionalObject& o : optional_objects())
    if (inside(f.path(), o.path) && !lookup(j, o.path)) return false;
  return true;
}
bool active_in_config(const Config& c, const Field& f) {
  for (const OptionalObject& o : optional_objects())
    if (inside(f.path(), o.path) && !o.present(c)) return false;
  return true;
}

int64_t to_int64(const std::string& path, const json& v) {
  if (v.is_number_unsigned()) {
    uint64_t u = v.get<uint64_t>();
    if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
      fail("{}: {} is too large for a 64-bit integer", path, v.dump());
    return static_cast<int64_t>(u);
  }
  if (v.is_number_integer()) return v.get<int64_t>();
  if (v.is_number_float()) {  // 2.0 or 1e3 are integers written as floats: accepted
    double d = v.get<double>();
    if (std::trunc(d) != d) fail("{}: expected an integer, got {}", path, describe(v));
    if (std::fabs(d) >= 9.2e18) fail("{}: {} is too large for a 64-bit integer", path, v.dump());
    return static_cast<int64_t>(d);
  }
  fail("{}: expected an integer, got {}", path, describe(v));
}

uint64_t to_uint64(const std::string& path, const json& v) {
  if (v.is_number_unsigned()) return v.get<uint64_t>();
  if (v.is_number_integer() || (v.is_number_float() && v.get<double>() < 0))
    fail("{}: expected a non-negative integer, got {}", path, describe(v));
  if (v.is_number_float()) {
    double d = v.get<double>();
    if (std::trunc(d) != d) fail("{}: expected a non-negative integer, got {}", path, describe(v));
    if (d >= 1.8e19) fail("{}: {} is too large for a 64-bit integer", path, v.dump());
    return static_cast<uint64_t>(d);
  }
  fail("{}: expected a non-negative integer, got {}", path, describe(v));
}

// The names a choice field allows: its rule's one_of, else all of the choice's names.
std::vector<std::string> allowed_names(const Field& f, const ChoiceSlot& choice) {
  if (!f.rule.one_of.empty()) return f.rule.one_of;
  return {choice.names.begin(), choice.names.end()};
}

// Type-checks v against the field and stores it in c.
void read_value(const Field& f, const json& v, Config& c) {
  std::visit(
      [&](auto target) {
        using T = std::remove_pointer_t<decltype(target)>;
        if constexpr (std::is_same_v<T, ChoiceSlot>) {
          if (!v.is_string()) fail("{}: expected a string, got {}", f.path(), describe(v));
          const std::string text = v.get<std::string>();
          const std::vector<std::string> allowed = allowed_names(f, target);
          if (std::find(allowed.begin(), allowed.end(), text) == allowed.end())
            fail_unknown_choice(f.path(), join(allowed), text);
          for (size_t i = 0; i < target.names.size(); ++i)
            if (target.names[i] == text) target.set(target.target, i);
        } else if constexpr (std::is_same_v<T, int64_t>) {
          *target = to_int64(f.path(), v);
        } else if constexpr (std::is_same_v<T, uint64_t>) {
          *target = to_uint64(f.path(), v);
        } else if constexpr (std::is_same_v<T, IntList>) {
          if (!v.is_array()) fail("{}: expected a list of integers, got {}", f.path(), describe(v));
          IntList values;
          for (size_t i = 0; i < v.size(); ++i) values.push_back(to_int64(fmt::format("{}[{}]", f.path(), i), v[i]));
          *target = std::move(values);
        } else if constexpr (std::is_same_v<T, LayerSelection>) {
          if (v.is_string() && v.get<std::string>() == "all") {
            *target = LayerSelection{.all = true, .layers = {}};
          } else if (v.is_array()) {
            LayerSelection selection;
            for (size_t i = 0; i < v.size(); ++i)
              selection.layers.push_back(to_int64(fmt::format("{}[{}]", f.path(), i), v[i]));
            *target = std::move(selection);
          } else {
            fail("{}: expected \"all\" or a list of layer indices, got {}", f.path(), describe(v));
          }
        } else if constexpr (std::is_same_v<T, StringList>) {
          if (!v.is_array()) fail("{}: expected a list of strings, got {}", f.path(), describe(v));
          StringList values;
          for (size_t i = 0; i < v.size(); ++i) {
            if (!v[i].is_string()) fail("{}[{}]: expected a string, got {}", f.path(), i, describe(v[i]));
            values.push_back(v[i].get<std::string>());
          }
          *target = std::move(values);
        } else if constexpr (std::is_same_v<T, double>) {
          if (!v.is_number()) fail("{}: expected a number, got {}", f.path(), describe(v));
          *target = v.get<double>();
        } else if constexpr (std::is_same_v<T, bool>) {
          if (!v.is_boolean()) fail("{}: expected true or false, got {}", f.path(), describe(v));
          *target = v.get<bool>();
        } else {
          if (!v.is_string()) fail("{}: expected a string, got {}", f.path(), describe(v));
          *target = v.get<std::string>();
        }
      },
      f.slot(c));
}

std::string with_hint(const Rule& rule) { return rule.hint.empty() ? "" : fmt::format(" ({})", rule.hint); }

// "> 0", ">= 1", "in [0, 1)".
std::string bound_text(const Rule& rule) {
  if (rule.min && rule.max)
    return fmt::format("in {}{}, {}{}", rule.min_open ? "(" : "[", *rule.min, *rule.max, rule.max_open ? ")" : "]");
  if (rule.min) return fmt::format("{} {}", rule.min_open ? ">" : ">=", *rule.min);
  return fmt::format("{} {}", rule.max_open ? "<" : "<=", *rule.max);
}

bool within_bounds(const Rule& rule, double x) {
  const bool below = rule.min && (rule.min_open ? x <= *rule.min : x < *rule.min);
  const bool above = rule.max && (rule.max_open ? x >= *rule.max : x > *rule.max);
  return !below && !above;
}

// A size above its limit is refused here, before anything is allocated for it.
void check_limit(const Field& f, double x) {
  if (f.rule.limit && x > *f.rule.limit)
    fail("{}: must be <= {} (l3c's limit for this size, src/core/limits.h), got {}", f.path(),
         static_cast<int64_t>(*f.rule.limit), static_cast<int64_t>(x));
}

// Checks the field's value in c against its rule (bounds, allowed values, non-empty).
void check_rule(const Field& f, Config& c) {
  const Rule& rule = f.rule;
  std::visit(
      [&](auto value) {
        using T = std::remove_pointer_t<decltype(value)>;
        if constexpr (std::is_same_v<T, ChoiceSlot>) {
          // a choice holds an allowed name once read
        } else if constexpr (std::is_same_v<T, std::string>) {
          if (rule.non_empty && value->empty()) fail("{}: must not be empty{}", f.path(), with_hint(rule));
        } else if constexpr (std::is_same_v<T, StringList>) {
          if (rule.non_empty && value->empty()) fail("{}: must not be empty{}", f.path(), with_hint(rule));
          for (const std::string& entry : *value)
            if (entry.empty()) fail("{}: entries must not be empty{}", f.path(), with_hint(rule));
        } else if constexpr (std::is_same_v<T, IntList>) {
          if (rule.non_empty && value->empty()) fail("{}: must not be empty{}", f.path(), with_hint(rule));
          for (int64_t entry : *value) {
            if (!within_bounds(rule, static_cast<double>(entry)))
              fail("{}: every entry must be {}, got {}{}", f.path(), bound_text(rule), entry, with_hint(rule));
            check_limit(f, static_cast<double>(entry));
          }
        } else if constexpr (std::is_same_v<T, LayerSelection>) {
          if (rule.non_empty && value->empty()) fail("{}: must not be empty{}", f.path(), with_hint(rule));
          for (int64_t entry : value->layers) {
            if (!within_bounds(rule, static_cast<double>(entry)))
              fail("{}: every entry must be {}, got {}{}", f.path(), bound_text(rule), entry, with_hint(rule));
            check_limit(f, static_cast<double>(entry));
          }
        } else if constexpr (!std::is_same_v<T, bool>) {
          if (!within_bounds(rule, static_cast<double>(*value)))
            fail("{}: must be {}, got {}{}", f.path(), bound_text(rule), *value, with_hint(rule));
          check_limit(f, static_cast<double>(*value));
        }
      },
      f.slot(c));
}

// Every key inside the object at `path` must be a field or an object of the schema; objects recurse.
void check_known_keys(const json& object, const std::string& path) {
  for (const auto& [key, value] : object.items()) {
    const std::string child = path + "." + key;
    if (is_object(child)) {
      if (!value.is_object()) fail("{}: expected an object, got {}", child, describe(value));
      check_known_keys(value, child);
    } else if (!find_field(child)) {
      fail("{}: unknown key (known keys in {}: {})", child, path, join(children(path)));
    }
  }
}

// Reads every key present in j into c. Unknown keys and values of the wrong type are errors; absent
// keys leave c as it is. Required fields and rules are not checked here (a parent file may be partial).
void read_present_fields(const json& j, Config& c, bool allow_extends) {
  if (!j.is_object()) fail("expected a JSON object at the top level, got {}", describe(j));
  for (const auto& [key, value] : j.items()) {
    if (key == kDescriptionKey || key == kExtendsKey) {
      if (key == kExtendsKey && !allow_extends)
        fail("extends: only allowed in config files read by load_config (a path relative to that file)");
      if (!value.is_string()) fail("{}: expected a string, got {}", key, describe(value));
      continue;
    }
    if (!is_section(key)) {
      std::vector<std::string> known = section_names();
      known.push_back(kExtendsKey);
      known.push_back(kDescriptionKey);
      fail("{}: unknown key (known keys at the top level: {})", key, join(known));
    }
    if (!value.is_object()) fail("{}: expected an object, got {}", key, describe(value));
    check_known_keys(value, key);
  }
  for (const Field& f : schema())
    if (const json* v = lookup(j, f)) read_value(f, *v, c);
}


// model.l3: derived sizes, then the rules that relate it to the rest of the model.
void resolve_and_check_l3(ModelConfig& m) {
  L3Config& l3 = m.l3;
  for (size_t j = 0; j < l3.after_layers.size(); ++j) {
    const int64_t layer = l3.after_layers[j];
    if (layer >= m.n_layers)
      fail("model.l3.after_layers: layer {} does not exist (model.n_layers = {}; layers are numbered from 0)", layer,
           m.n_layers);
    if (j > 0 && layer <= l3.after_layers[j - 1])
      fail("model.l3.after_layers: must be strictly increasing (one L3 layer after a decoder layer at most), got {}",
           json(l3.after_layers).dump());
  }
  if (l3.d_emb == 0) l3.d_emb = l3.tie_kv ? m.d_model : std::max<int64_t>(1, m.d_model / 2);
  if (l3.d_up == 0) l3.d_up = checked_mul<int64_t>(4, m.d_model, "4 * model.d_model (the default model.l3.d_up)");
  if (l3.tie_kv && l3.d_emb != m.d_model)
    fail("model.l3.tie_kv: tied keys and values need model.l3.d_emb == model.d_model ({}), got d_emb {}", m.d_model,
         l3.d_emb);
  if (l3.v < m.vocab_size)
    fail("model.l3.v: must be >= model.vocab_size ({}) so that every token owns a row, got {}", m.vocab_size, l3.v);
  const int64_t most = checked_mul<int64_t>(m.vocab_size, l3.k, "model.vocab_size * model.l3.k");
  if (l3.v > most)
    fail("model.l3.v: must be <= model.vocab_size * model.l3.k = {} * {} = {} (no token owns more than k rows), "
         "got {}", m.vocab_size, l3.k, most, l3.v);
  if (l3.v > std::numeric_limits<int32_t>::max())
    fail("model.l3.v: {} rows do not fit 32-bit row offsets (at most {})", l3.v, std::numeric_limits<int32_t>::max());
  const L3AllocationConfig& a = l3.allocation;
  if (!a.data.empty() && !a.path.empty())
    fail("model.l3.allocation: give data (token shards to compute it from) or path (an allocation file), not both");
  if (a.method != AllocationMethod::Uniform && a.data.empty() && a.path.empty())
    fail("model.l3.allocation: method \"{}\" needs data (token shards to compute it from) or path (a file written by "
         "`l3c allocate`)", choice_name(a.method));
}

// model.moe: the layers exist and the routing fits the experts.
void resolve_and_check_moe(ModelConfig& m) {
  MoeConfig& moe = m.moe;
  for (size_t j = 0; j < moe.layers.layers.size(); ++j) {
    const int64_t layer = moe.layers.layers[j];
    if (layer >= m.n_layers)
      fail("model.moe.layers: layer {} does not exist (model.n_layers = {}; layers are numbered from 0)", layer,
           m.n_layers);
    if (j > 0 && layer <= moe.layers.layers[j - 1])
      fail("model.moe.layers: must be strictly increasing, got {}", json(moe.layers.layers).dump());
  }
  if (moe.top_k > moe.experts)
    fail("model.moe.top_k ({}) must be <= model.moe.experts ({}): a token reaches top_k distinct experts", moe.top_k,
         moe.experts);
  if (moe.init_std == 0.0) moe.init_std = m.init_std;
}

// Fills the fields whose 0 means "derive me", then checks the rules that relate several fields.
void resolve_and_check_relations(Config& c) {
  ModelConfig& m = c.model;
  TrainConfig& t = c.train;
  if (m.n_kv_heads == 0) m.n_kv_heads = m.n_heads;
  int64_t micro_batch_tokens =
      checked_mul<int64_t>(t.micro_batch, c.data.seq_len, "train.micro_batch * data.seq_len");
  if (t.batch_tokens == 0) t.batch_tokens = micro_batch_tokens;

  if (m.d_model % m.n_heads != 0)
    fail("model.d_model ({}) must be divisible by model.n_heads ({})", m.d_model, m.n_heads);
  if (m.n_heads % m.n_kv_heads != 0)
    fail("model.n_heads ({}) must be divisible by model.n_kv_heads ({})", m.n_heads, m.n_kv_heads);
  if (m.head_dim() % 2 != 0)
    fail("model.d_model / model.n_heads = {} (the head dimension) must be even for rotary embeddings (RoPE)",
         m.head_dim());
  if (t.batch_tokens % micro_batch_tokens != 0)
    fail("train.batch_tokens ({}) must be a multiple of train.micro_batch * data.seq_len ({})", t.batch_tokens,
         micro_batch_tokens);
  if (t.min_lr > t.lr) fail("train.min_lr ({}) must be <= train.lr ({})", t.min_lr, t.lr);
  if (t.warmup_steps > t.steps) fail("train.warmup_steps ({}) must be <= train.steps ({})", t.warmup_steps, t.steps);
  if (t.precision == Precision::Bf16 && t.dtype != DType::F32)
    fail("train.precision \"bf16\" keeps f32 master weights and moments: train.dtype must be \"f32\", got \"{}\"",
         choice_name(t.dtype));
  if (t.precision == Precision::Bf16 && t.device == DeviceChoice::Cpu)
    fail("train.precision \"bf16\" needs the GPU (train.device \"cuda\" or \"auto\"); the CPU computes in f32 or f64");
  if (m.l3.enabled()) resolve_and_check_l3(m);
  if (m.moe.enabled()) resolve_and_check_moe(m);
}

// Recursively merges child into base: objects merge key by key, anything else in child replaces.
void merge_into(json& base, const json& child) {
  for (const auto& [key, value] : child.items()) {
    auto existing = base.find(key);
    if (existing != base.end() && existing->is_object() && value.is_object())
      merge_into(*existing, value);
    else
      base[key] = value;
  }
}

// Reads `path` and, recursively, the files it extends; returns the merged JSON without "extends".
// `chain` holds the files being read (canonical path, path as shown) to detect cycles.
json read_config_chain(const std::string& path, std::vector<std::pair<fs::path, std::string>>& chain) {
  std::error_code error;
  if (!fs::exists(path, error)) {
    if (chain.empty()) fail("config file not found: {}", path);
    fail("config file not found: {} (extended by {})", path, chain.back().second);
  }
  fs::path canonical = fs::weakly_canonical(path, error);
  if (error) canonical = fs::absolute(path).lexically_normal();
  for (size_t i = 0; i < chain.size(); ++i) {
    if (chain[i].first != canonical) continue;
    std::string cycle;
    for (size_t k = i; k < chain.size(); ++k) cycle += chain[k].second + " -> ";
    fail("extends cycle: {}{}", cycle, path);
  }

  json j = read_json_file(path);
  try {
    Config scratch;
    read_present_fields(j, scratch, /*allow_extends=*/true);
  } catch (const UserError& e) {
    fail("{}: {}", path, e.what());
  }
  auto extends = j.find(kExtendsKey);
  if (extends == j.end()) return j;

  std::string relative = extends->get<std::string>();
  if (relative.empty()) fail("{}: extends: must not be empty (a path relative to this file)", path);
  std::string parent = (fs::path(path).parent_path() / relative).lexically_normal().string();
  j.erase(extends);
  chain.emplace_back(canonical, path);
  json merged = read_config_chain(parent, chain);
  chain.pop_back();
  merge_into(merged, j);
  return merged;
}

// "a,b,,c" -> {"a", "b", "c"}; "" -> {}.
std::vector<std::string> split_list(const std::string& text) {
  std::vector<std::string> items;
  size_t begin = 0;
  while (begin <= text.size()) {
    const size_t comma = std::min(text.find(',', begin), text.size());
    if (comma > begin) items.push_back(text.substr(begin, comma - begin));
    begin = comma + 1;
  }
  return items;
}

// The override's value: JSON when it parses, else the text itself. For string fields, only a JSON
// string literal is taken as JSON, so "run.dir=2024" means the folder "2024", not a number; a list of
// strings may also be given as "a,b".
json override_value(const Field& f, const std::string& text) {
  if (json_depth_exceeded(text, limits::kMaxJsonDepth) != std::string::npos)
    fail("{}: the value is nested deeper than {} levels", f.path(), limits::kMaxJsonDepth);
  json parsed = json::parse(text, nullptr, /*allow_exceptions=*/false);
  Config scratch;
  // A choice is spelled by a name, as a string is.
  bool string_field =
      std::holds_alternative<std::string*>(f.slot(scratch)) || std::holds_alternative<ChoiceSlot>(f.slot(scratch));
  if (std::holds_alternative<StringList*>(f.slot(scratch)) && !parsed.is_array()) {
    // "--set train.trainable=l3_table,norm": a comma-separated list
    json list = json::array();
    for (const std::string& item : split_list(text)) list.push_back(item);
    return list;
  }
  if (parsed.is_discarded() || (string_field && !parsed.is_string())) return json(text);
  return parsed;
}

// Applies one "path.to.key=value" override to the merged config JSON, creating the objects on the way.
void apply_override(json& merged, const std::string& text) {
  size_t eq = text.find('=');
  if (eq == std::string::npos) fail("--set {}: expected KEY=VALUE, e.g. --set train.lr=3e-4", text);
  std::string key = text.substr(0, eq);
  if (key.empty()) fail("--set {}: empty key; expected KEY=VALUE, e.g. --set train.lr=3e-4", text);
  const std::vector<std::string> parts = split_path(key);
  if (!is_section(parts[0]))
    fail("--set {}: unknown key (keys are SECTION.KEY; known sections: {})", text, join(section_names()));
  const Field* f = find_field(key);
  if (!f) {
    // List the keys of the deepest object the key names or passes through.
    std::string object = parts[0];
    for (size_t i = 1; i < parts.size() && is_object(object + "." + parts[i]); ++i) object += "." + parts[i];
    fail("--set {}: unknown key (known keys in {}: {})", text, object, join(children(object)));
  }

  json value = override_value(*f, text.substr(eq + 1));
  try {
    Config scratch;
    read_value(*f, value, scratch);
  } catch (const UserError& e) {
    fail("--set {}: {}", text, e.what());
  }
  json* target = &merged;
  for (size_t i = 0; i + 1 < parts.size(); ++i) {
    target = &(*target)[parts[i]];
    if (!target->is_object()) *target = json::object();
  }
  (*target)[parts.back()] = std::move(value);
}

}  // namespace

bool LayerSelection::contains(int64_t layer) const {
  return all || std::find(layers.begin(), layers.end(), layer) != layers.end();
}

nlohmann::json read_json_file(const std::string& path) {
  std::error_code error;
  if (fs::is_directory(path, error)) fail("{}: is a folder, expected a JSON file", path);
  if (fs::exists(path, error) && !fs::is_regular_file(path, error))
    fail("{}: not a regular file (a device or a FIFO), expected a JSON file", path);
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    if (!fs::exists(path, error)) fail("file not found: {}", path);
    fail("{}: cannot open for reading", path);
  }
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) fail("{}: read error", path);
  return parse_json(text, path);
}

Config config_from_json(const nlohmann::json& j) {
  Config c;
  read_present_fields(j, c, /*allow_extends=*/false);
  for (const Field& f : schema()) {
    if (!active_in_json(j, f)) continue;  // inside an optional object that is absent
    if (f.rule.required && !lookup(j, f)) fail("{}: required", f.path());
    check_rule(f, c);
  }
  resolve_and_check_relations(c);
  return c;
}

nlohmann::ordered_json config_to_json(const Config& c) {
  Config copy = c;  // slots give mutable access; read from a copy
  nlohmann::ordered_json out = nlohmann::ordered_json::object();
  for (const Field& f : schema()) {
    if (!active_in_config(copy, f)) continue;
    const std::vector<std::string> parts = split_path(f.path());
    nlohmann::ordered_json* node = &out;
    for (size_t i = 0; i + 1 < parts.size(); ++i) node = &(*node)[parts[i]];
    std::visit(
        [&](auto value) {
          using T = std::remove_pointer_t<decltype(value)>;
          if constexpr (std::is_same_v<T, ChoiceSlot>) {
            (*node)[parts.back()] = std::string(value.name());
          } else if constexpr (std::is_same_v<T, LayerSelection>) {
            if (value->all) (*node)[parts.back()] = "all";
            else (*node)[parts.back()] = value->layers;
          } else {
            (*node)[parts.back()] = *value;
          }
        },
        f.slot(copy));
  }
  return out;
}

Config load_config(const std::string& path, const std::vector<std::string>& overrides) {
  std::vector<std::pair<fs::path, std::string>> chain;
  json merged = read_config_chain(path, chain);
  for (const std::string& text : overrides) apply_override(merged, text);
  return config_from_json(merged);
}

}  // namespace l3c
