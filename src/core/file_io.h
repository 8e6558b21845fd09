// Reading whole files, and durable file writes: write to a temporary name, fsync, rename into place, so a reader never sees
// a half-written file and a crash leaves either the old file or the new one.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace l3c {

// Writes contents to path atomically (path.tmp, fsync, rename). UserError naming the path and the
// system's reason on failure, after removing the temporary file.
void write_file_atomic(const std::string& path, std::string_view contents);

// The whole contents of a file. UserError naming the path when it cannot be opened or read.
std::string read_file_bytes(const std::string& path);

// fsyncs a folder, making the renames inside it durable.
void fsync_directory(const std::string& dir);

struct WrittenFile {
  uint64_t bytes = 0;
  std::string sha256;  // hex digest of the bytes written
};

// Creates `path` (which must not exist), writes `pieces` in order, fsyncs and closes it, hashing what it
// writes on the way. UserError naming the path and the system's reason (disk full, file too large,
// permission denied); the partial file is removed.
WrittenFile write_file_durable(const std::string& path, const std::vector<std::string_view>& pieces);

}  // namespace l3c
