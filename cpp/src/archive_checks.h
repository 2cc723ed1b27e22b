// What the sampler checks in an export's file before handing it to torch's loaders, which
// trust it: each throws sagan::UsageError, one line naming the file and the damage.
#pragma once

#include <filesystem>
#include <string>

namespace sagan {

// The file's sha256, as hex: the sidecar records it. Throws if the file cannot be read.
std::string sha256_of_file(const std::filesystem::path& path);

// A TorchScript archive: every tensor record holds the bytes its storage takes (torch::jit::load
// would read a record cut short as weights from past its buffer). An archive this check cannot
// read is left to the loader to refuse.
void check_tensor_records(const std::filesystem::path& model_path);

// An AOTInductor package: every segment of its shared library that dlopen maps lies within the
// file (one cut short would end the process with SIGBUS). A library that is no 64-bit ELF file is
// left to the loader to refuse.
void check_shared_libraries(const std::filesystem::path& model_path);

}  // namespace sagan
