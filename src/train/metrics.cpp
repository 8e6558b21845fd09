// JSONL metrics.
#include "train/metrics.h"

#include <cerrno>
#include <cstring>

#include "core/errors.h"

namespace l3c {

MetricsWriter::MetricsWriter(const std::string& path) : path_(path) {
  errno = 0;
  out_.open(path, std::ios::app);
  if (!out_) fail("{}: cannot open the metrics file for writing: {}", path, std::strerror(errno ? errno : EIO));
}

void MetricsWriter::write(const nlohmann::json& record) {
  errno = 0;
  out_ << record.dump() << "\n";
  out_.flush();
  if (!out_) fail("{}: writing metrics failed: {}", path_, std::strerror(errno ? errno : EIO));
}

}  // namespace l3c
