// Turning generator output into PNG files, the same way as sagan_plugin/sample.py.
#pragma once

#include <filesystem>
#include <string>
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
// in .png. Fails early when the target cannot be written; missing folders are made on writing.
OutputTarget prepare_output(const std::string& path);

// A file name with the given extension (".png") whose folder is, or can be made, writable.
std::filesystem::path prepare_file(const std::string& path, const std::string& extension);

// Writes (N, C, H, W) float images in [-1, 1]: the grid, or DIR/000000.png ... Each file is
// written to a temporary name first and renamed, so nothing is left half-written.
void write_images(const at::Tensor& images, const OutputTarget& target);

// Writes a tensor that torch.load reads (torch::pickle_save), via a temporary file.
void write_tensor(const std::filesystem::path& path, const at::Tensor& tensor);

// Writes bytes to path via a temporary file in the same directory, removed if anything fails.
void write_file_atomically(const std::filesystem::path& path, const std::vector<char>& bytes);

}  // namespace sagan
