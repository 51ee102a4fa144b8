// File helpers shared inside the library.
#pragma once

#include <filesystem>
#include <string>

#include "sdrt/sdrt.hpp"

namespace sdrt {

// Write `bytes` to a temporary name beside `path` and rename it into place (no half-written file under `path`).
void write_file_atomic(const std::filesystem::path& path, const std::string& bytes);

// A text encoder's token table: tensor "weight" (rows, width) float32 of a safetensors file.
Tensor read_token_table(const std::filesystem::path& path, int64_t rows, int64_t width);

}  // namespace sdrt
