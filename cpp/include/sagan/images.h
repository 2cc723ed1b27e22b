// Turning generator output into PNG files, the same way as sagan_plugin/sample.py.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>

namespace sagan {

// float images in [-1, 1] -> uint8 via trunc(clamp((x + 1) * 127.5 + 0.5, 0, 255)).
at::Tensor to_uint8(const at::Tensor& images);

// (N, C, H, W) uint8 -> (rows*(H+2)+2, cols*(W+2)+2, C) uint8 with cols = ceil(sqrt(N)),
// images in row-major order on a black background, 2 pixels apart.
at::Tensor image_grid(const at::Tensor& images);

// The grid of n images of C x H x W must fit in one PNG: stb's encoder sizes its buffers in int.
void check_grid_fits_png(int64_t n, int64_t channels, int64_t height, int64_t width);

// The name of image i in an output directory: 000000.png, 000001.png, ...
std::string image_file_name(int64_t i);

// Where the images go: a .png file (one grid) or a directory (one PNG per image).
struct OutputTarget {
  std::filesystem::path path;
  bool directory = false;
};

// A path ending in '/' or naming an existing directory is a directory; anything else must end
// in .png. Fails early when the target cannot be written (in a directory: when a folder takes
// the name of one of the n images); missing folders are made on writing.
OutputTarget prepare_output(const std::string& path, int64_t n);

// A file name with the given extension (".png") whose folder is, or can be made, writable.
std::filesystem::path prepare_file(const std::string& path, const std::string& extension);

// Files that belong together (the images of a run and its tensor), each written under a
// temporary name beside its target and renamed into place only once all are written: a failure
// while writing (a full disk) leaves every target as it was. What is not committed is removed,
// with the folders made for it.
class OutputFiles {
 public:
  OutputFiles() = default;
  ~OutputFiles();
  OutputFiles(const OutputFiles&) = delete;
  OutputFiles& operator=(const OutputFiles&) = delete;

  void add(const std::filesystem::path& path, const std::vector<char>& bytes);
  void commit();

 private:
  // {target, temporary}
  std::vector<std::pair<std::filesystem::path, std::filesystem::path>> staged_;
  std::vector<std::filesystem::path> folders_;
};

// Adds (N, C, H, W) float images in [-1, 1]: the grid, or DIR/000000.png ...
void write_images(const at::Tensor& images, const OutputTarget& target, OutputFiles& files);

// Adds a tensor that torch.load reads (torch::pickle_save).
void write_tensor(const std::filesystem::path& path, const at::Tensor& tensor, OutputFiles& files);

}  // namespace sagan
