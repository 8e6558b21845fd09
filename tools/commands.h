// The `l3c` subcommands; each takes the arguments after its name and returns the exit code.
#pragma once
#include <string>
#include <vector>

namespace l3c::cmd {

int train(const std::vector<std::string>& args);
int eval(const std::vector<std::string>& args);
int inspect(const std::vector<std::string>& args);
int bench(const std::vector<std::string>& args);
int bench_generate(const std::vector<std::string>& args);  // `bench --generate`
int prepare(const std::vector<std::string>& args);
int generate(const std::vector<std::string>& args);
int allocate(const std::vector<std::string>& args);
int tokenizer(const std::vector<std::string>& args);
int export_model(const std::vector<std::string>& args);
int import_model(const std::vector<std::string>& args);
int logits(const std::vector<std::string>& args);

}  // namespace l3c::cmd
