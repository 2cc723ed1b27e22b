#include "sagan/images.h"

#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include <unistd.h>

#include <stb_image_write.h>  // Debian's libstb-dev: header plus a compiled libstb
#include <torch/csrc/jit/serialization/pickle.h>
#include <torch/script.h>

#include "sagan/generator.h"

namespace sagan {
namespace fs = std::filesystem;
namespace {

void append_bytes(void* context, void* data, int size) {
  auto* bytes = static_cast<std::vector<char>*>(context);
  bytes->insert(bytes->end(), static_cast<char*>(data), static_cast<char*>(data) + size);
}

// (H, W, C) uint8 -> PNG bytes.
std::vector<char> encode_png(const torch::Tensor& hwc) {
  torch::Tensor pixels = hwc.contiguous();
  const int height = static_cast<int>(pixels.size(0));
  const int width = static_cast<int>(pixels.size(1));
  const int channels = static_cast<int>(pixels.size(2));
  std::vector<char> bytes;
  if (!stbi_write_png_to_func(append_bytes, &bytes, width, height, channels,
                              pixels.data_ptr<uint8_t>(), width * channels))
    throw std::runtime_error("PNG encoding failed for a " + std::to_string(width) + "x" +
                             std::to_string(height) + "x" + std::to_string(channels) + " image");
  return bytes;
}

std::string temporary_suffix() { return ".tmp" + std::to_string(::getpid()); }

}  // namespace

torch::Tensor to_uint8(const torch::Tensor& images) {
  return images.add(1).mul(127.5).add(0.5).clamp(0, 255).to(torch::kUInt8);
}

torch::Tensor image_grid(const torch::Tensor& images) {
  const int64_t n = images.size(0), channels = images.size(1);
  const int64_t height = images.size(2), width = images.size(3);
  int64_t cols = 1;
  while (cols * cols < n) ++cols;
  const int64_t rows = (n + cols - 1) / cols;
  constexpr int64_t pad = 2;
  torch::Tensor grid = torch::zeros(
      {rows * (height + pad) + pad, cols * (width + pad) + pad, channels}, torch::kUInt8);
  torch::Tensor hwc = images.permute({0, 2, 3, 1});
  for (int64_t i = 0; i < n; ++i) {
    const int64_t top = pad + (i / cols) * (height + pad), left = pad + (i % cols) * (width + pad);
    grid.narrow(0, top, height).narrow(1, left, width).copy_(hwc[i]);
  }
  return grid;
}

namespace {

// Probe now so that a read-only target fails before any sampling is done. A missing folder is
// judged by the nearest folder above it, creating nothing: the writer creates the rest.
void check_writable(const fs::path& folder) {
  std::error_code ec;
  fs::path existing = folder;
  while (!existing.empty() && existing != existing.root_path() && !fs::exists(existing, ec))
    existing = existing.parent_path();
  if (existing.empty()) existing = ".";
  if (!fs::is_directory(existing, ec))
    throw UsageError("cannot write to output directory " + folder.string() + ": " +
                     existing.string() + " is not a folder");
  const fs::path probe = existing / (".sagan_sample_probe" + temporary_suffix());
  if (!std::ofstream(probe)) throw UsageError("cannot write to output directory " + folder.string());
  fs::remove(probe, ec);
}

}  // namespace

fs::path prepare_file(const std::string& path, const std::string& extension) {
  const fs::path file(path);
  if (path.empty() || path.back() == '/' || file.extension() != extension)
    throw UsageError("expected a file name ending in " + extension + ", got \"" + path + "\"");
  check_writable(file.has_parent_path() ? file.parent_path() : fs::path("."));
  return file;
}

OutputTarget prepare_output(const std::string& path) {
  if (path.empty() || !(path.back() == '/' || fs::is_directory(path)))
    return {prepare_file(path, ".png"), false};
  check_writable(path);
  return {fs::path(path), true};
}

void write_file_atomically(const fs::path& path, const std::vector<char>& bytes) {
  std::error_code ec;
  if (path.has_parent_path()) fs::create_directories(path.parent_path(), ec);
  if (ec) throw UsageError("cannot create output directory " + path.parent_path().string() + ": " +
                           ec.message());
  const fs::path temporary = path.string() + temporary_suffix();
  {
    std::ofstream out(temporary, std::ios::binary);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    if (!out.flush()) {
      fs::remove(temporary, ec);
      throw UsageError("cannot write " + path.string());
    }
  }
  fs::rename(temporary, path, ec);
  if (ec) {
    fs::remove(temporary, ec);
    throw UsageError("cannot write " + path.string());
  }
}

void write_tensor(const fs::path& path, const at::Tensor& tensor) {
  write_file_atomically(path, torch::jit::pickle_save(tensor));
}

void write_images(const torch::Tensor& images, const OutputTarget& target) {
  torch::Tensor pixels = to_uint8(images.cpu());
  if (!target.directory) {
    write_file_atomically(target.path, encode_png(image_grid(pixels)));
    return;
  }
  char name[32];
  for (int64_t i = 0; i < pixels.size(0); ++i) {
    std::snprintf(name, sizeof name, "%06lld.png", static_cast<long long>(i));
    write_file_atomically(target.path / name, encode_png(pixels[i].permute({1, 2, 0})));
  }
}

}  // namespace sagan
