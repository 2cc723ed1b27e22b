// A sagan-plugin generator export (TorchScript .pt or AOTInductor .pt2) and the sampling recipe
// shared with sagan_plugin/sample.py, so that both give the same images for the same inputs.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

// Kept out of this header so that users of it compile quickly.
namespace torch::inductor {
class AOTIModelPackageLoader;
}
namespace torch::jit {
struct Module;
}

namespace sagan {

// `message` as one line of valid UTF-8, fit for stderr and for Python's str: control characters
// (a newline in a path or a sidecar field) become \n or \xHH, and so does each byte that is not
// part of valid UTF-8 (a path or a model's code may hold any bytes). UTF-8 text, an accented file
// name say, stays as it is.
std::string one_line(const std::string& message);

// Bad input (a missing file, a sidecar that does not match, a class out of range): the message
// is one line that says what was wrong and what is expected, escaped as one_line does.
class UsageError : public std::runtime_error {
 public:
  explicit UsageError(const std::string& message);
};

// The one line of an error message worth showing (pass a c10::Error's what_without_backtrace()):
// the first, or for an error inside a TorchScript model the last, which names the error, not
// the interpreter's preamble and traceback; for a call that the TorchScript compiler finds
// wrong, the signature called and the line after it, which says what is wrong. Escaped as
// one_line does.
std::string error_message(const std::string& message);

// Refuses, before any work, `n` images of `bytes_per_image` each when they would not fit in half
// of the memory this machine has free (as sagan_plugin.machine.require_memory). `what` names
// them, e.g. "--n 1000 images of 3x32x32".
void check_fits_in_memory(const std::string& what, int64_t n, double bytes_per_image);

// The JSON sidecar `<model>.json` written next to every export by `sagan-plugin export`.
struct ExportInfo {
  std::string format;  // "torchscript" or "aoti"
  std::string device;  // the device an AOTInductor package was compiled for
  int64_t nz = 0;
  int64_t num_classes = 0;  // 0: unconditional, the label input is ignored
  int64_t resolution = 0;
  int64_t channels = 0;
  int64_t max_batch = 0;  // the largest batch an AOTInductor package takes; 0 (TorchScript): any
  int64_t step = 0;
  std::string torch_version;
  std::string sha256;
};

// Reads and checks the sidecar of `model_path`, including the artefact's sha256.
ExportInfo read_export_info(const std::filesystem::path& model_path);

// "cpu", "cuda[:index]" or "auto"; cuda needs a CUDA build of torch and a visible GPU. "auto" is
// the device an AOTInductor package was compiled for, else cuda when available, else cpu.
c10::Device parse_device(const std::string& name, const ExportInfo& info);

// Label i is classes[i % classes.size()]; with no classes given it is i % num_classes for a
// conditional model and 0 (ignored) for an unconditional one. Checks every class index.
at::Tensor class_labels(int64_t n, const std::vector<int64_t>& classes, int64_t num_classes);

class Generator {
 public:
  Generator(const std::filesystem::path& model_path, const std::string& device = "auto");
  ~Generator();
  Generator(const Generator&) = delete;
  Generator& operator=(const Generator&) = delete;

  const ExportInfo& info() const { return info_; }
  c10::Device device() const { return device_; }

  // One forward pass: z float32 (N, nz), y int64 (N,) with labels in [0, num_classes) and N at
  // most info().max_batch (when set), both on any device; output on device(). Checks both
  // before running the model.
  at::Tensor forward(const at::Tensor& z, const at::Tensor& y);

  // Bytes per image at the peak of sample(): z, label, the output chunks and their concatenation.
  double sample_bytes_per_image() const;

  // The sampling recipe: a CPU generator seeded with `seed` draws z = randn(n, nz) in one go,
  // labels come from class_labels, and the generator runs on chunks of `batch` rows.
  // Returns float32 (n, C, R, R) in [-1, 1] on the CPU. Refuses an n that would not fit in memory
  // and chunks larger than an AOTInductor package's max_batch.
  at::Tensor sample(int64_t n, uint64_t seed, const std::vector<int64_t>& classes,
                       int64_t batch);

 private:
  ExportInfo info_;
  c10::Device device_;
  std::unique_ptr<torch::jit::Module> script_;
  std::unique_ptr<torch::inductor::AOTIModelPackageLoader> package_;
};

}  // namespace sagan
