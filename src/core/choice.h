// Choices: values that are one of a fixed set of names (train.precision "fp32" or "bf16", --l3-tables "device",
// "host" or "mmap"). Each is an enum with its names in ChoiceNames<E>::names, in the enum's order: files and the
// command line spell a choice by its name, which is parsed once (parse_choice, or the config schema); code compares
// enums, and writes the name back (choice_name) where a file or a log shows it.
#pragma once
#include <array>
#include <cstddef>
#include <string>
#include <string_view>

namespace l3c {

template <typename E> struct ChoiceNames;  // specialised beside each enum: static constexpr std::array names

// The name of a choice, as files spell it.
template <typename E> std::string_view choice_name(E value) {
  return ChoiceNames<E>::names.at(static_cast<size_t>(value));
}

// "a, b, c": the names of a choice, for messages.
template <typename E> std::string choice_names() {
  std::string out;
  for (std::string_view name : ChoiceNames<E>::names) out += (out.empty() ? "" : ", ") + std::string(name);
  return out;
}

// UserError "WHAT: must be one of NAMES; got \"TEXT\"".
[[noreturn]] void fail_unknown_choice(std::string_view what, const std::string& names, std::string_view text);

// The choice named `text`; any other text is a UserError naming `what` (the option or field) and the names allowed.
template <typename E> E parse_choice(std::string_view text, std::string_view what) {
  for (size_t i = 0; i < ChoiceNames<E>::names.size(); ++i)
    if (ChoiceNames<E>::names[i] == text) return static_cast<E>(i);
  fail_unknown_choice(what, choice_names<E>(), text);
}

}  // namespace l3c
