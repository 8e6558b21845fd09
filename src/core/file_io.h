// Reading whole files, and durable file writes: write to a temporary name, fsync, rename into place, so a reader never sees
// a half-written file and a crash leaves either the old file or the new one.
#pragma once
#include <string>
#include <string_view>

namespace l3c {

// Writes contents to path atomically (path.tmp, fsync, rename). UserError naming the path and the
// system's reason on failure, after removing the temporary file.
void write_file_atomic(const std::string& path, std::string_view contents);

// The whole contents of a file. UserError naming the path when it cannot be opened or read.
std::string read_file_bytes(const std::string& path);

// fsyncs a folder, making the renames inside it durable.
void fsync_directory(const std::string& dir);

}  // namespace l3c
