// The run's metrics file: one JSON object per line (metrics.jsonl), flushed as it is written so a
// crashed run keeps everything up to its last step.
#pragma once
#include <fstream>
#include <string>

#include <nlohmann/json.hpp>

namespace l3c {

class MetricsWriter {
 public:
  explicit MetricsWriter(const std::string& path);  // appends
  void write(const nlohmann::json& record);

 private:
  std::string path_;
  std::ofstream out_;
};

}  // namespace l3c
