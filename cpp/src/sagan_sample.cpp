// sagan_sample: draw images from a sagan-plugin generator export with LibTorch.
//   sagan_sample --model G.pt2 --n 64 --classes 0,3,7 --seed 0 --out grid.png
// Bad input ends with one line `error: ...` on stderr and exit code 2.
#include <unistd.h>

#include <chrono>
#include <iomanip>
#include <iostream>
#include <sstream>

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
};

// Every image is kept until the end (a grid needs them all): refuse an n whose images and
// noise would not fit in this machine's memory, rather than fail in the allocator.
void check_fits_in_memory(int64_t n, const sagan::ExportInfo& info) {
  if (n <= 0) return;  // class_labels says what is wrong
  const double per_image = 4.0 * (info.channels * info.resolution * info.resolution + info.nz);
  const double needed = per_image * static_cast<double>(n);
  const double memory = static_cast<double>(sysconf(_SC_PHYS_PAGES)) * sysconf(_SC_PAGE_SIZE);
  if (needed > memory) {
    std::ostringstream message;
    message << std::setprecision(3) << "--n " << n << " images of " << info.channels << "x"
            << info.resolution << "x" << info.resolution << " need about " << needed / 1e9
            << " GB of memory, more than this machine's " << memory / 1e9
            << " GB; sample at most " << static_cast<int64_t>(memory / per_image)
            << " images a run";
    throw sagan::UsageError(message.str());
  }
}

int run(const Options& options) {
  // Check every output before the (possibly long) sampling run.
  if (options.out.empty() && options.save_tensor.empty())
    throw sagan::UsageError("nothing to write: give --out grid.png (or DIR/) or --save-tensor "
                            "FILE.pt");
  std::optional<sagan::OutputTarget> target;
  if (!options.out.empty()) target = sagan::prepare_output(options.out);
  std::optional<std::filesystem::path> tensor_file;
  if (!options.save_tensor.empty()) tensor_file = sagan::prepare_file(options.save_tensor, ".pt");
  sagan::Generator generator(options.model, options.device);
  check_fits_in_memory(options.n, generator.info());
  sagan::class_labels(options.n, options.classes, generator.info().num_classes);  // checks only

  const auto start = std::chrono::steady_clock::now();
  at::Tensor images = generator.sample(options.n, static_cast<uint64_t>(options.seed),
                                         options.classes, options.batch);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

  if (target) sagan::write_images(images, *target);
  if (tensor_file) sagan::write_tensor(*tensor_file, images);
  std::cout << "sampled " << options.n << " images of " << generator.info().resolution << "x"
            << generator.info().resolution << " (" << generator.info().format << ", "
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
  app.add_option("--n", options.n, "number of images")->capture_default_str();
  auto* one_class = app.add_option_function<int64_t>(
      "--class", [&](int64_t k) { options.classes = {k}; }, "class of every image");
  app.add_option("--classes", options.classes, "comma-separated classes, repeated cyclically")
      ->delimiter(',')
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll)
      ->excludes(one_class);
  app.add_option("--seed", options.seed, "seed of the CPU generator that draws z, in [0, 2^63)")
      ->check(CLI::Validator(
          [](std::string& text) {
            // CLI11 would wrap a value past int64 into range: read it strictly here.
            std::size_t end = 0;
            try {
              if (std::stoll(text, &end) >= 0 && end == text.size()) return std::string();
            } catch (const std::exception&) {
            }
            return "expected an integer in [0, 2^63 - 1], got " + text;
          },
          "INT in [0, 2^63)"))
      ->capture_default_str();
  app.add_option("--device", options.device, "cpu, cuda[:i] or auto")->capture_default_str();
  app.add_option("--batch", options.batch, "images per forward pass")->capture_default_str();
  app.add_option("--out", options.out, "grid .png file, or a directory for one PNG per image");
  app.add_option("--save-tensor", options.save_tensor,
                 "also write the float images (N, C, H, W) in [-1, 1] for torch.load");
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::string message = e.what();
    std::cerr << "error: " << message.substr(0, message.find('\n'))
              << " (see sagan_sample --help)" << std::endl;
    return 2;
  }
  try {
    return run(options);
  } catch (const sagan::UsageError& e) {
    std::cerr << "error: " << e.what() << std::endl;
  } catch (const c10::Error& e) {
    std::string message = e.what_without_backtrace();
    std::cerr << "error: " << message.substr(0, message.find('\n')) << std::endl;
  } catch (const std::exception& e) {
    std::string message = e.what();
    std::cerr << "error: " << message.substr(0, message.find('\n')) << std::endl;
  }
  return 2;
}
