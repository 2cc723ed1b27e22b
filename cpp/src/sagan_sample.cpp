// sagan_sample: draw images from a sagan-plugin generator export with LibTorch.
//   sagan_sample --model G.pt2 --n 64 --classes 0,3,7 --seed 0 --out grid.png
// Bad input ends with one line `error: ...` on stderr and exit code 2.
#include <chrono>
#include <iostream>

#include <CLI/CLI.hpp>
#include <c10/util/Exception.h>

#include "sagan/generator.h"
#include "sagan/images.h"

namespace {

struct Options {
  std::string model;
  int64_t n = 64;
  std::vector<int64_t> classes;
  uint64_t seed = 0;
  std::string device = "auto";
  int64_t batch = 64;
  std::string out;
  std::string save_tensor;
};

int run(const Options& options) {
  // Check every output before the (possibly long) sampling run.
  std::optional<sagan::OutputTarget> target;
  if (!options.out.empty()) target = sagan::prepare_output(options.out);
  std::optional<std::filesystem::path> tensor_file;
  if (!options.save_tensor.empty()) tensor_file = sagan::prepare_file(options.save_tensor, ".pt");
  sagan::Generator generator(options.model, options.device);
  sagan::class_labels(options.n, options.classes, generator.info().num_classes);  // checks only

  const auto start = std::chrono::steady_clock::now();
  at::Tensor images = generator.sample(options.n, options.seed, options.classes, options.batch);
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
  app.add_option("--seed", options.seed, "seed of the CPU generator that draws z")
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
