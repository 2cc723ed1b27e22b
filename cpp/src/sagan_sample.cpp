// sagan_sample: draw images from a sagan-plugin generator export with LibTorch.
//   sagan_sample --model G.pt2 --n 64 --classes 0,3,7 --seed 0 --out grid.png
// Bad input ends with one line `error: ...` on stderr and exit code 2.
#include <charconv>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <iostream>
#include <optional>

#include <ATen/Context.h>
#include <CLI/CLI.hpp>
#include <c10/util/Exception.h>

#include "sagan/generator.h"
#include "sagan/images.h"

namespace {

struct Options {
  std::string model;
  int64_t n = 64;
  std::vector<int64_t> classes;
  int64_t seed = 0;  // [0, 2^63 - 1], as `sagan-plugin sample seed=`
  std::string device = "auto";
  int64_t batch = 64;
  std::string out;
  std::string save_tensor;
  bool no_tf32 = false;
};

namespace fs = std::filesystem;

// CLI11 would read "" as 0, "0x10" as 16 and clamp a value past int64: read integers strictly.
std::optional<int64_t> parse_integer(const std::string& text) {
  int64_t value = 0;
  const char* end = text.data() + text.size();
  const auto [stop, error] = std::from_chars(text.data(), end, value);
  if (text.empty() || error != std::errc() || stop != end) return std::nullopt;
  return value;
}

CLI::Validator integer_at_least(int64_t low, const std::string& expected) {
  return CLI::Validator(
      [=](std::string& text) {
        const std::optional<int64_t> value = parse_integer(text);
        return value && *value >= low ? std::string()
                                       : "expected " + expected + ", got \"" + text + "\"";
      },
      "INT");
}

// "0,3,7" -> {0, 3, 7}; nothing for "", "0,,3" or "3,".
std::optional<std::vector<int64_t>> parse_classes(const std::string& text) {
  std::vector<int64_t> classes;
  std::size_t start = 0;
  while (true) {
    const std::size_t comma = text.find(',', start);
    const std::optional<int64_t> k = parse_integer(text.substr(start, comma - start));
    if (!k) return std::nullopt;
    classes.push_back(*k);
    if (comma == std::string::npos) return classes;
    start = comma + 1;
  }
}

// Writing over the model or its sidecar would destroy the export: the temporary file's rename
// replaces it without a word. `output` is the file, or the folder of image_file_name(0..n-1).
void refuse_overwriting_model(const std::string& option, const fs::path& output, bool folder,
                              int64_t n, const std::string& model) {
  std::error_code ec;
  for (const fs::path given : {fs::path(model), fs::path(model + ".json")}) {
    // Through symlinks: a link to DIR/000000.png is that file, whatever the link is named.
    fs::path precious = fs::weakly_canonical(given, ec);
    if (ec) precious = given;
    bool same = false;
    if (!folder) {
      same = fs::equivalent(output, precious, ec);
    } else if (fs::equivalent(output, precious.has_parent_path() ? precious.parent_path() : ".",
                              ec)) {
      const std::optional<int64_t> i = parse_integer(precious.stem().string());
      same = i && *i >= 0 && *i < n && sagan::image_file_name(*i) == precious.filename();
    }
    if (same)
      throw sagan::UsageError(option + " " + output.string() + " would overwrite " +
                              given.string() + ", the model's own file; write elsewhere");
  }
}

// AOTIModelPackageLoader unpacks a package into a folder under TMPDIR and removes it in its
// destructor, which a constructor that throws (a damaged package) never reaches. So the program
// gives it a TMPDIR of its own for its lifetime, removed at exit whatever happened. It is set
// before any other thread runs (setenv is not thread-safe); without one, TMPDIR is left as is.
class OwnTemporaryFolder {
 public:
  OwnTemporaryFolder() {
    std::error_code ec;
    std::string pattern = (fs::temp_directory_path(ec) / "sagan_sample_XXXXXX").string();
    if (!ec && ::mkdtemp(pattern.data()) && ::setenv("TMPDIR", pattern.c_str(), 1) == 0)
      path_ = pattern;
  }
  ~OwnTemporaryFolder() {
    std::error_code ec;
    if (!path_.empty()) fs::remove_all(path_, ec);
  }
  OwnTemporaryFolder(const OwnTemporaryFolder&) = delete;
  OwnTemporaryFolder& operator=(const OwnTemporaryFolder&) = delete;

 private:
  fs::path path_;
};

int run(const Options& options) {
  // Check every output before the (possibly long) sampling run.
  if (options.out.empty() && options.save_tensor.empty())
    throw sagan::UsageError("nothing to write: give --out grid.png (or DIR/) or --save-tensor "
                            "FILE.pt");
  std::optional<sagan::OutputTarget> target;
  if (!options.out.empty()) target = sagan::prepare_output(options.out, options.n);
  std::optional<fs::path> tensor_file;
  if (!options.save_tensor.empty()) tensor_file = sagan::prepare_file(options.save_tensor, ".pt");
  if (target)
    refuse_overwriting_model("--out", target->path, target->directory, options.n, options.model);
  if (tensor_file) refuse_overwriting_model("--save-tensor", *tensor_file, false, 0, options.model);
  sagan::Generator generator(options.model, options.device);
  const sagan::ExportInfo& info = generator.info();
  if (options.n > 0) {  // else class_labels says what is wrong
    const int64_t c = info.channels, r = info.resolution;
    if (target && !target->directory) sagan::check_grid_fits_png(options.n, c, r, r);
    // Every image is kept until the end; a grid also needs the uint8 copy, the grid and
    // stb's filtered and deflated buffers, each about the grid's size (cf. sample.py).
    const double written = target && !target->directory ? 5.0 * c * (r + 2) * (r + 2) : c * r * r;
    sagan::check_fits_in_memory("--n " + std::to_string(options.n) + " images of " +
                                    std::to_string(c) + "x" + std::to_string(r) + "x" +
                                    std::to_string(r),
                                options.n, generator.sample_bytes_per_image() + written);
  }
  sagan::class_labels(options.n, options.classes, info.num_classes);  // checks only
  if (options.no_tf32) {
    at::globalContext().setAllowTF32CuDNN(false);
    at::globalContext().setAllowTF32CuBLAS(false);
  }

  const auto start = std::chrono::steady_clock::now();
  at::Tensor images = generator.sample(options.n, static_cast<uint64_t>(options.seed),
                                         options.classes, options.batch);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

  sagan::OutputFiles files;  // all of them, or none
  if (target) sagan::write_images(images, *target, files);
  if (tensor_file) sagan::write_tensor(*tensor_file, images, files);
  files.commit();
  std::cout << "sampled " << options.n << " images of " << info.resolution << "x"
            << info.resolution << " (" << info.format << ", "
            << generator.device() << ", batch " << options.batch << ") in " << seconds
            << " s: " << options.n / seconds << " images/s" << std::endl;
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Options options;
  CLI::App app{"Sample images from a generator exported by `sagan-plugin export`."};
  app.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);  // last wins
  app.add_option("--model", options.model, "TorchScript .pt or AOTInductor .pt2 (with its .json)")
      ->required();
  const std::string any_integer = "a decimal integer in [-2^63, 2^63 - 1]";
  app.add_option("--n", options.n, "number of images")
      ->check(integer_at_least(INT64_MIN, any_integer))
      ->capture_default_str();
  auto* one_class = app.add_option_function<int64_t>(
                           "--class", [&](int64_t k) { options.classes = {k}; },
                           "class of every image")
                        ->check(integer_at_least(INT64_MIN, any_integer));
  std::string classes;
  app.add_option("--classes", classes, "comma-separated classes, repeated cyclically")
      ->check(CLI::Validator(
          [](std::string& text) {
            return parse_classes(text) ? std::string()
                                       : "expected integers like 3 or 0,3,7, got \"" + text + "\"";
          },
          "INT[,INT...]"))
      ->excludes(one_class);
  app.add_option("--seed", options.seed, "seed of the CPU generator that draws z, in [0, 2^63)")
      ->check(integer_at_least(0, "an integer in [0, 2^63 - 1]"))
      ->capture_default_str();
  app.add_option("--device", options.device, "cpu, cuda[:i] or auto")->capture_default_str();
  app.add_option("--batch", options.batch, "images per forward pass")
      ->check(integer_at_least(INT64_MIN, any_integer))
      ->capture_default_str();
  app.add_option("--out", options.out, "grid .png file, or a directory for one PNG per image");
  app.add_option("--save-tensor", options.save_tensor,
                 "also write the float images (N, C, H, W) in [-1, 1] for torch.load");
  app.add_flag("--no-tf32", options.no_tf32,
               "CUDA: float32 convolutions without TF32 (torch's default uses it): slower, for "
               "comparing with Python");
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {  // one line, whatever CLI11 adds
    std::string message = e.what();
    std::cerr << "error: " << sagan::one_line(message.substr(0, message.find('\n')))
              << " (see sagan_sample --help)" << std::endl;
    return 2;
  }
  const OwnTemporaryFolder temporary;
  try {
    if (app.count("--classes")) options.classes = *parse_classes(classes);
    return run(options);
  } catch (const sagan::UsageError& e) {
    std::cerr << "error: " << e.what() << std::endl;
  } catch (const c10::Error& e) {
    std::cerr << "error: " << sagan::error_message(e.what_without_backtrace()) << std::endl;
  } catch (const std::exception& e) {
    std::cerr << "error: " << sagan::error_message(e.what()) << std::endl;
  }
  return 2;
}
