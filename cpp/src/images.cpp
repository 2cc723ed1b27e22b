#include "sagan/images.h"

#include <array>
#include <algorithm>
#include <charconv>
#include <climits>
#include <cmath>
#include <limits>
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

// stb filters (W*C + 1) * H bytes and deflates them into a buffer that may grow 1/8 past its
// input (9-bit literals), all counted in int.
bool fits_png(int64_t height, int64_t width, int64_t channels) {
  // In double: the int64 product overflows for the sizes this must refuse.
  return (static_cast<double>(width) * static_cast<double>(channels) + 1) *
             static_cast<double>(height) <= INT_MAX / 9 * 8;
}

// (H, W, C) uint8 -> PNG bytes.
std::vector<char> encode_png(const torch::Tensor& hwc) {
  torch::Tensor pixels = hwc.contiguous();
  if (!fits_png(pixels.size(0), pixels.size(1), pixels.size(2)))
    throw UsageError("an image of " + std::to_string(pixels.size(1)) + "x" +
                     std::to_string(pixels.size(0)) + " pixels is too large for one PNG");
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
// The longest temporary_suffix(): Linux pids are at most 2^22 (PID_MAX_LIMIT).
constexpr std::size_t kLongestSuffix = sizeof(".tmp4194304") - 1;

}  // namespace

torch::Tensor to_uint8(const torch::Tensor& images) {
  return images.add(1).mul(127.5).add(0.5).clamp(0, 255).to(torch::kUInt8);
}

namespace {

constexpr int64_t kPad = 2;

// {height, width} of the grid.
// cols = ceil(sqrt(n)) (sample.py: isqrt(n - 1) + 1), found without overflow: counting up
// from 1 took 3e9 steps for n near 2^63 and then, cols * cols overflowing, never stopped.
int64_t grid_columns(int64_t n) {
  if (n <= 1) return 1;
  int64_t cols = std::max<int64_t>(1, static_cast<int64_t>(std::sqrt(static_cast<double>(n))) - 1);
  while (cols <= (n - 1) / cols) ++cols;  // cols * cols < n, for n >= 1
  return cols;
}

// {height, width} of the grid; saturates at INT64_MAX (a grid that large fits no PNG anyway).
std::array<int64_t, 2> grid_size(int64_t n, int64_t height, int64_t width) {
  const int64_t cols = grid_columns(n);
  const int64_t rows = n <= 0 ? 0 : (n - 1) / cols + 1;
  const auto side = [](int64_t count, int64_t size) {
    int64_t total = 0;
    if (__builtin_mul_overflow(count, size + kPad, &total) ||
        __builtin_add_overflow(total, kPad, &total))
      return std::numeric_limits<int64_t>::max();
    return total;
  };
  return {side(rows, height), side(cols, width)};
}

}  // namespace

void check_grid_fits_png(int64_t n, int64_t channels, int64_t height, int64_t width) {
  const auto [grid_height, grid_width] = grid_size(n, height, width);
  if (!fits_png(grid_height, grid_width, channels))
    throw UsageError("a grid of " + std::to_string(n) + " images of " + std::to_string(width) +
                     "x" + std::to_string(height) + " (" + std::to_string(grid_width) + "x" +
                     std::to_string(grid_height) + " pixels) is too large for one PNG; use " +
                     "--out DIR/ for one PNG per image");
}

std::string image_file_name(int64_t i) {
  char name[32];
  std::snprintf(name, sizeof name, "%06lld.png", static_cast<long long>(i));
  return name;
}

torch::Tensor image_grid(const torch::Tensor& images) {
  if (!images.defined() || images.dim() != 4 || images.scalar_type() != torch::kUInt8)
    throw UsageError("image_grid expects a uint8 tensor of shape (N, C, H, W), got " +
                     (images.defined() ? std::string(c10::toString(images.scalar_type())) +
                                             " of " + std::to_string(images.dim()) + " dims"
                                       : std::string("no tensor")));
  const int64_t n = images.size(0), channels = images.size(1);
  const int64_t height = images.size(2), width = images.size(3);
  const auto [grid_height, grid_width] = grid_size(n, height, width);
  const int64_t cols = (grid_width - kPad) / (width + kPad);
  torch::Tensor grid = torch::zeros({grid_height, grid_width, channels}, torch::kUInt8);
  torch::Tensor hwc = images.permute({0, 2, 3, 1});
  for (int64_t i = 0; i < n; ++i) {
    const int64_t top = kPad + (i / cols) * (height + kPad);
    const int64_t left = kPad + (i % cols) * (width + kPad);
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

namespace {

// What is at `path` (not_found when nothing); a path that cannot even be looked at (a name too
// long, a loop of symbolic links) is refused now, not after the sampling run.
fs::file_type output_type(const std::string& path) {
  std::error_code ec;
  const fs::file_status status = fs::status(path, ec);
  if (status.type() == fs::file_type::none)
    throw UsageError("cannot write to " + path + ": " + ec.message());
  return status.type();
}

}  // namespace

fs::path prepare_file(const std::string& path, const std::string& extension) {
  const fs::path file(path);
  if (path.empty() || path.back() == '/' || file.extension() != extension)
    throw UsageError("expected a file name ending in " + extension + ", got \"" + path + "\"");
  // Else the rename after the sampling run fails, once the other outputs are written.
  if (output_type(path) == fs::file_type::directory)
    throw UsageError(path + " is a folder: expected a file name ending in " + extension);
  // A name (or path) that fits NAME_MAX (PATH_MAX) only without the temporary name's suffix
  // would fail in the same place.
  const auto refuse_longer_than = [&](const std::string& what, std::size_t length,
                                      std::size_t most) {
    if (length + kLongestSuffix > most)
      throw UsageError("cannot write to " + path + ": File name too long (a " + what + " of " +
                       std::to_string(length) + " bytes: it is written under a temporary name " +
                       "up to " + std::to_string(kLongestSuffix) + " bytes longer first, and " +
                       what + "s have at most " + std::to_string(most) + "; keep it to " +
                       std::to_string(most - kLongestSuffix) + ")");
  };
  refuse_longer_than("name", file.filename().string().size(), NAME_MAX);
  refuse_longer_than("path", path.size(), PATH_MAX - 1);  // PATH_MAX counts the final NUL
  check_writable(file.has_parent_path() ? file.parent_path() : fs::path("."));
  return file;
}

OutputTarget prepare_output(const std::string& path, int64_t n) {
  if (path.empty() || !(path.back() == '/' || output_type(path) == fs::file_type::directory))
    return {prepare_file(path, ".png"), false};
  check_writable(path);
  // A folder with an image's name fails that image's rename, after the images before it are in
  // place. Looking through the folder costs the same for any n; a file or link there is replaced.
  std::error_code ec, unused;
  for (fs::directory_iterator entry(path, ec), end; !ec && entry != end; entry.increment(ec)) {
    const std::string name = entry->path().filename().string();
    int64_t i = -1;
    std::from_chars(name.data(), name.data() + name.size(), i);
    if (i >= 0 && i < n && image_file_name(i) == name &&
        entry->symlink_status(unused).type() == fs::file_type::directory)
      throw UsageError("cannot write image " + std::to_string(i) + " to " +
                       entry->path().string() + ": that is a folder (the " +
                       std::to_string(n) + " images go to " + image_file_name(0) + " .. " +
                       image_file_name(n - 1) + "); remove it or write elsewhere");
  }
  return {fs::path(path), true};
}

OutputFiles::~OutputFiles() {
  std::error_code ec;
  for (const auto& [target, temporary] : staged_) fs::remove(temporary, ec);
  for (const fs::path& folder : folders_) fs::remove(folder, ec);  // only if empty
}

void OutputFiles::add(const fs::path& path, const std::vector<char>& bytes) {
  std::error_code ec;
  for (fs::path folder = path.parent_path(); !folder.empty() && !fs::exists(folder, ec);
       folder = folder.parent_path())
    folders_.push_back(folder);  // the innermost first
  if (path.has_parent_path()) fs::create_directories(path.parent_path(), ec);
  if (ec) throw UsageError("cannot create output directory " + path.parent_path().string() + ": " +
                           ec.message());
  const fs::path temporary = path.string() + temporary_suffix();
  staged_.emplace_back(path, temporary);  // removed on failure, even half-written
  std::ofstream out(temporary, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  out.close();  // a full disk may show only here
  if (out.fail())
    throw UsageError("cannot write " + path.string() + " (disk full, or not writable?)");
}

void OutputFiles::commit() {
  for (auto& [target, temporary] : staged_) {
    std::error_code ec;
    fs::rename(temporary, target, ec);
    if (ec) throw UsageError("cannot write " + target.string() + ": " + ec.message());
    temporary.clear();  // nothing left to remove
  }
  staged_.clear();
  folders_.clear();
}

void write_tensor(const fs::path& path, const at::Tensor& tensor, OutputFiles& files) {
  files.add(path, torch::jit::pickle_save(tensor));
}

void write_images(const torch::Tensor& images, const OutputTarget& target, OutputFiles& files) {
  torch::Tensor pixels = to_uint8(images.cpu());
  if (!target.directory) {
    files.add(target.path, encode_png(image_grid(pixels)));
    return;
  }
  for (int64_t i = 0; i < pixels.size(0); ++i)
    files.add(target.path / image_file_name(i), encode_png(pixels[i].permute({1, 2, 0})));
}

}  // namespace sagan
