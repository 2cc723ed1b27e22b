#include "sagan/generator.h"

#include "archive_checks.h"

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <iomanip>
#include <limits>
#include <sstream>
#include <type_traits>

#include <unistd.h>

#include <ATen/CPUGeneratorImpl.h>
#include <nlohmann/json.hpp>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/cuda.h>
#include <torch/script.h>

namespace sagan {
namespace {

constexpr const char* kExportKind = "sagan-plugin generator export";
constexpr const char* kEmbedded = "sagan.json";  // sagan_plugin/export.py EMBEDDED
// How the TorchScript interpreter's error (a std::runtime_error) starts; it ends with the error
// itself ("RuntimeError: mat1 and mat2 shapes cannot be multiplied ...").
constexpr const char* kInterpreterError =
    "The following operation failed in the TorchScript interpreter";

// The length of the UTF-8 sequence at text[i], or 0 where the bytes there are not valid UTF-8
// (a stray continuation byte, a sequence cut short, an overlong form, a surrogate, past U+10FFFF).
std::size_t utf8_length(const std::string& text, std::size_t i) {
  const auto at = [&](std::size_t k) { return static_cast<unsigned char>(text[i + k]); };
  const unsigned char lead = at(0);
  if (lead < 0x80) return 1;
  std::size_t length = 0;
  if (lead >= 0xc2 && lead <= 0xdf) {
    length = 2;
  } else if (lead >= 0xe0 && lead <= 0xef) {
    length = 3;
  } else if (lead >= 0xf0 && lead <= 0xf4) {
    length = 4;
  }
  if (length == 0 || i + length > text.size()) return 0;
  // The second byte's range is narrower after E0 (overlong), ED (surrogates), F0 (overlong)
  // and F4 (past U+10FFFF).
  const unsigned char low = lead == 0xe0 ? 0xa0 : lead == 0xf0 ? 0x90 : 0x80;
  const unsigned char high = lead == 0xed ? 0x9f : lead == 0xf4 ? 0x8f : 0xbf;
  for (std::size_t k = 1; k < length; ++k)
    if (at(k) < (k == 1 ? low : 0x80) || at(k) > (k == 1 ? high : 0xbf)) return 0;
  return length;
}

std::string describe(const torch::Tensor& t) {
  if (!t.defined()) return "no tensor";
  std::ostringstream text;
  text << c10::toString(t.scalar_type()) << " of shape " << t.sizes();
  return text.str();
}

// Bytes of memory this process could still take, as sagan_plugin.machine.available_memory.
double available_memory() {
  std::ifstream meminfo("/proc/meminfo");
  std::string key;
  double kilobytes = 0;
  while (meminfo >> key >> kilobytes) {
    if (key == "MemAvailable:") return kilobytes * 1024;
    meminfo.ignore(std::numeric_limits<std::streamsize>::max(), '\n');
  }
  return static_cast<double>(sysconf(_SC_PHYS_PAGES)) * sysconf(_SC_PAGE_SIZE);
}

template <typename T>
T field(const nlohmann::json& doc, const char* key, const std::filesystem::path& sidecar) {
  if (!doc.contains(key)) throw UsageError(sidecar.string() + " has no \"" + key + "\" field");
  const nlohmann::json& value = doc.at(key);
  // get<int64_t>() would truncate 128.5 or wrap 2^64 - 1 without a word.
  if constexpr (std::is_integral_v<T>)
    if (!value.is_number_integer() ||
        (value.is_number_unsigned() &&
         value.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())))
      throw UsageError(sidecar.string() + ": field \"" + key + "\" must be an integer, got " +
                       value.dump());
  try {
    return doc.at(key).get<T>();
  } catch (const nlohmann::json::exception&) {
    throw UsageError(sidecar.string() + ": field \"" + key + "\" has the wrong type");
  }
}

// The shape fields that `sagan-plugin export` also stores inside the artefact must be the
// sidecar's: the sidecar's sha256 covers the artefact, not the sidecar. An export made before
// the fields were embedded has none, and only its sha256 is checked.
void check_embedded(const ExportInfo& info, const std::string& embedded,
                    const std::filesystem::path& model_path) {
  if (embedded.empty()) return;
  nlohmann::json doc = nlohmann::json::parse(embedded, nullptr, false);
  std::vector<std::pair<const char*, int64_t>> sidecar_says = {
      {"nz", info.nz}, {"num_classes", info.num_classes}, {"resolution", info.resolution},
      {"channels", info.channels}};
  // Stored in AOTInductor packages only, and only since the sampler enforces it.
  if (doc.is_object() && doc.contains("max_batch"))
    sidecar_says.emplace_back("max_batch", info.max_batch);
  for (const auto& [key, value] : sidecar_says) {
    if (!doc.is_object() || !doc.contains(key) || !doc.at(key).is_number_integer())
      throw UsageError(model_path.string() + " holds no valid " + kEmbedded + " (export it again)");
    const int64_t model_value = doc.at(key).get<int64_t>();
    if (model_value != value)
      throw UsageError("sidecar " + model_path.string() + ".json says " + key + "=" +
                       std::to_string(value) + ", the model itself " + key + "=" +
                       std::to_string(model_value) +
                       " (the sidecar was edited or belongs to another export; export it again)");
  }
}

}  // namespace

std::string one_line(const std::string& message) {
  std::string text;
  for (std::size_t i = 0; i < message.size();) {
    const auto byte = static_cast<unsigned char>(message[i]);
    const std::size_t length = utf8_length(message, i);
    const bool control = length == 1 && (byte < 0x20 || byte == 0x7f);
    if (length > 0 && !control) {
      text.append(message, i, length);
      i += length;
      continue;
    }
    if (byte == '\n') {
      text += "\\n";
    } else {
      char escaped[8];
      std::snprintf(escaped, sizeof escaped, "\\x%02x", byte);
      text += escaped;
    }
    ++i;
  }
  return text;
}

UsageError::UsageError(const std::string& message) : std::runtime_error(one_line(message)) {}

std::string error_message(const std::string& message) {
  std::istringstream text(message);
  std::string line, first, second, last;
  while (std::getline(text, line)) {
    if (line.find_first_not_of(" \t") == std::string::npos) continue;
    if (first.empty()) {
      first = line;
    } else if (second.empty()) {
      second = line;
    }
    last = line;
  }
  if (first.rfind(kInterpreterError, 0) == 0) return one_line(last);
  // The compiler's error for a call that matches the one signature there is names that
  // signature first ("forward(Tensor z, Tensor y) -> Tensor:") and what is wrong only next
  // ("Argument y not provided.").
  if (!second.empty() && first.back() == ':' && first.find(") -> ") != std::string::npos)
    return one_line(first + " " + second);
  return one_line(first);
}

void check_fits_in_memory(const std::string& what, int64_t n, double bytes_per_image) {
  const double needed = bytes_per_image * static_cast<double>(n);
  const double available = available_memory();
  if (needed > available / 2) {
    std::ostringstream message;
    message << std::setprecision(3) << what << " need about " << needed / 1e9
            << " GB of memory, more than half of the " << available / 1e9
            << " GB this machine has free; sample at most "
            << static_cast<int64_t>(available / 2 / bytes_per_image) << " images a run";
    throw UsageError(message.str());
  }
}

ExportInfo read_export_info(const std::filesystem::path& model_path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::is_regular_file(model_path, ec))
    throw UsageError("model file " + model_path.string() +
                     (fs::is_directory(model_path, ec) ? " is a folder"
                      : fs::exists(model_path, ec)     ? " is not a regular file"
                                                       : " does not exist") +
                     " (expected a .pt or .pt2 from `sagan-plugin export`)");
  const fs::path sidecar = model_path.string() + ".json";
  if (!fs::exists(sidecar, ec))
    throw UsageError("no sidecar " + sidecar.string() +
                     " next to the model (write exports with `sagan-plugin export`)");
  if (!fs::is_regular_file(sidecar, ec))
    throw UsageError("sidecar " + sidecar.string() + " is not a regular file (expected the " +
                     "JSON written by `sagan-plugin export`)");
  std::ifstream in(sidecar);
  if (!in) throw UsageError("cannot read sidecar " + sidecar.string());
  nlohmann::json doc;
  try {
    doc = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception&) {
    throw UsageError("sidecar " + sidecar.string() + " is not valid JSON");
  }
  // (value("kind", "") would throw nlohmann's own message for a kind that is no string)
  if (!doc.is_object() || !doc.contains("kind") || doc.at("kind") != kExportKind)
    throw UsageError(sidecar.string() + " is not the sidecar of a sagan-plugin generator export");

  ExportInfo info;
  info.format = field<std::string>(doc, "format", sidecar);
  info.device = field<std::string>(doc, "device", sidecar);
  info.nz = field<int64_t>(doc, "nz", sidecar);
  info.num_classes = field<int64_t>(doc, "num_classes", sidecar);
  info.resolution = field<int64_t>(doc, "resolution", sidecar);
  info.channels = field<int64_t>(doc, "channels", sidecar);
  // Every package `sagan-plugin export` has made was compiled for batches of up to 65536
  // (sagan_plugin.export.MAX_BATCH), those from before the field was written included.
  constexpr int64_t kAotiMaxBatch = 65536;
  info.max_batch = doc.contains("max_batch") ? field<int64_t>(doc, "max_batch", sidecar)
                   : info.format == "aoti"   ? kAotiMaxBatch
                                             : 0;
  info.step = field<int64_t>(doc, "step", sidecar);
  info.torch_version = field<std::string>(doc, "torch_version", sidecar);
  info.sha256 = field<std::string>(doc, "sha256", sidecar);
  if (info.format != "torchscript" && info.format != "aoti")
    throw UsageError(sidecar.string() + ": format must be \"torchscript\" or \"aoti\", got \"" +
                     info.format + "\"");
  if (info.device != "cpu" && info.device.rfind("cuda", 0) != 0)
    throw UsageError(sidecar.string() + ": device must be cpu or cuda, got \"" + info.device + "\"");
  if (info.nz <= 0 || info.num_classes < 0 || info.resolution <= 0 || info.channels <= 0 ||
      info.max_batch < 0)
    throw UsageError(sidecar.string() + ": nz, resolution and channels must be positive and " +
                     "num_classes and max_batch non-negative");
  if (sha256_of_file(model_path) != info.sha256)
    throw UsageError("sha256 of " + model_path.string() + " does not match its sidecar " +
                     sidecar.string() + " (the file changed after export, or the sidecar is another export's; export it again)");
  return info;
}

torch::Device parse_device(const std::string& name, const ExportInfo& info) {
  if (name == "auto") {
    if (info.format == "aoti") return parse_device(info.device, info);
    return torch::Device(torch::cuda::is_available() ? "cuda" : "cpu");
  }
  // torch::Device would also take "cpu:0", which the AOTInductor loader refuses only after
  // extracting the package to a temporary folder that it then leaves behind: take only the
  // forms that --help names.
  const std::string index = name.rfind("cuda:", 0) == 0 ? name.substr(5) : "";
  const bool cuda_index = !index.empty() && index.size() <= 3 &&
                          index.find_first_not_of("0123456789") == std::string::npos &&
                          (index == "0" || index[0] != '0');  // torch refuses "cuda:01"
  if (name != "cpu" && name != "cuda" && !cuda_index)
    throw UsageError("device must be auto, cpu, cuda or cuda:<index>, got \"" + name + "\"");
  const torch::Device device(name);
  if (device.is_cuda()) {
    if (!torch::cuda::is_available())
      throw UsageError("device " + name + " asked for, but no CUDA GPU is available to this " +
                       "torch build (" + (info.format == "aoti" && info.device != "cpu"
                       ? "the package is compiled for " + info.device + ": sample it on a GPU, "
                         "or export it again with device=cpu"
                       : std::string("use --device cpu")) + ")");
    if (device.has_index() &&
        device.index() >= static_cast<int>(torch::cuda::device_count()))
      throw UsageError("device " + name + " does not exist (" +
                       std::to_string(torch::cuda::device_count()) + " CUDA devices)");
  }
  return device;
}

torch::Tensor class_labels(int64_t n, const std::vector<int64_t>& classes, int64_t num_classes) {
  if (n <= 0) throw UsageError("n must be a positive number of images, got " + std::to_string(n));
  if (!classes.empty() && num_classes == 0)
    throw UsageError("the model is unconditional (no classes): leave out the class labels");
  for (int64_t k : classes)
    if (k < 0 || k >= num_classes)
      throw UsageError("class " + std::to_string(k) + " is out of range: the model has " +
                       std::to_string(num_classes) + " classes (0.." +
                       std::to_string(num_classes - 1) + ")");
  torch::Tensor index = torch::arange(n, torch::kInt64);
  if (classes.empty()) return num_classes > 0 ? index.remainder(num_classes) : index.zero_();
  torch::Tensor given = torch::tensor(classes, torch::kInt64);
  return given.index_select(0, index.remainder(static_cast<int64_t>(classes.size())));
}

Generator::Generator(const std::filesystem::path& model_path, const std::string& device)
    : info_(read_export_info(model_path)), device_(parse_device(device, info_)) {
  if (info_.format == "torchscript") {
    check_tensor_records(model_path);
    torch::jit::ExtraFilesMap extra{{kEmbedded, ""}};
    try {
      script_ = std::make_unique<torch::jit::Module>(
          torch::jit::load(model_path.string(), device_, extra));
    } catch (const c10::Error& e) {
      throw UsageError("cannot load " + model_path.string() +
                       " as TorchScript: " + error_message(e.what_without_backtrace()));
    } catch (const std::exception& e) {  // the TorchScript compiler's errors, std::out_of_range
      throw UsageError("cannot load " + model_path.string() +
                       " as TorchScript: " + error_message(e.what()));
    }
    script_->eval();
    check_embedded(info_, extra[kEmbedded], model_path);
    return;
  }
  if (torch::Device(info_.device).type() != device_.type())
    throw UsageError(model_path.string() + " is an AOTInductor package compiled for " +
                     info_.device + "; export it again with device=" + device +
                     " or sample with --device " + info_.device);
  check_shared_libraries(model_path);
  try {
    const c10::DeviceIndex index = device_.has_index() ? device_.index() : -1;
    package_ = std::make_unique<torch::inductor::AOTIModelPackageLoader>(
        model_path.string(), "model", false, 1, index);
  } catch (const c10::Error& e) {
    throw UsageError("cannot load " + model_path.string() +
                     " as an AOTInductor package: " + error_message(e.what_without_backtrace()));
  } catch (const std::exception& e) {  // nlohmann's, for a damaged metadata file
    throw UsageError("cannot load " + model_path.string() +
                     " as an AOTInductor package: " + error_message(e.what()));
  }
  const auto metadata = package_->get_metadata();
  const auto embedded = metadata.find(kEmbedded);
  check_embedded(info_, embedded == metadata.end() ? "" : embedded->second, model_path);
}

Generator::~Generator() = default;

torch::Tensor Generator::forward(const torch::Tensor& z, const torch::Tensor& y) {
  // A bad input must fail here: inside an AOTInductor kernel's OpenMP region an out-of-range
  // label ends the process with an abort that no caller can catch.
  const std::string nz = std::to_string(info_.nz);
  if (!z.defined() || z.dim() != 2 || z.size(1) != info_.nz || z.scalar_type() != torch::kFloat32)
    throw UsageError("z must be a float32 tensor of shape (N, " + nz + "), got " + describe(z));
  const std::string n = std::to_string(z.size(0));
  if (info_.max_batch > 0 && z.size(0) > info_.max_batch)
    throw UsageError("z has " + n + " rows, but this AOTInductor package was exported for " +
                     "batches of at most " + std::to_string(info_.max_batch));
  if (!y.defined() || y.dim() != 1 || y.size(0) != z.size(0) || y.scalar_type() != torch::kInt64)
    throw UsageError("y must be an int64 tensor of shape (" + n + ",), as many labels as z has " +
                     "rows, got " + describe(y));
  // For an export made before the shape was embedded in it, num_classes is the sidecar's word
  // alone (its sha256 covers the artefact, not the sidecar), and nothing cheaper than reading
  // the embedding's weights could check it: a sidecar edited to claim more classes than the
  // model has lets an out-of-range label through to the model.
  if (info_.num_classes > 0 && y.numel() > 0) {
    const auto [low, high] = torch::aminmax(y);
    // One copy to the host (for labels on a GPU, one synchronisation rather than three).
    const auto range = torch::stack({low, high}).to(torch::kCPU);
    const int64_t bad = range[0].item<int64_t>() < 0 ? range[0].item<int64_t>()
                                                     : range[1].item<int64_t>();
    if (bad < 0 || bad >= info_.num_classes)
      throw UsageError("y holds label " + std::to_string(bad) + ", out of range: the model has " +
                       std::to_string(info_.num_classes) + " classes (0.." +
                       std::to_string(info_.num_classes - 1) + ")");
  }
  // TorchScript fails on no rows where AOTInductor returns no images: return none for both.
  if (z.size(0) == 0)
    return torch::empty({0, info_.channels, info_.resolution, info_.resolution},
                        torch::TensorOptions(torch::kFloat32).device(device_));
  std::vector<torch::Tensor> inputs{z.to(device_).contiguous(), y.to(device_).contiguous()};
  if (script_) return script_->forward({inputs[0], inputs[1]}).toTensor();
  return package_->run(inputs).at(0);
}

double Generator::sample_bytes_per_image() const {
  return 4.0 * info_.nz + 8 + 2 * 4.0 * info_.channels * info_.resolution * info_.resolution;
}

torch::Tensor Generator::sample(int64_t n, uint64_t seed, const std::vector<int64_t>& classes,
                                int64_t batch) {
  if (batch <= 0)
    throw UsageError("batch must be a positive number of images, got " + std::to_string(batch));
  if (info_.max_batch > 0 && std::min(batch, n) > info_.max_batch)
    throw UsageError("batch " + std::to_string(batch) + " is more than this AOTInductor " +
                     "package takes: it was exported for batches of at most " +
                     std::to_string(info_.max_batch));
  if (n > 0) {
    const std::string r = std::to_string(info_.resolution);
    check_fits_in_memory("n=" + std::to_string(n) + " images of " +
                             std::to_string(info_.channels) + "x" + r + "x" + r,
                         n, sample_bytes_per_image());
  }
  torch::Tensor labels = class_labels(n, classes, info_.num_classes);
  torch::Tensor z = torch::randn({n, info_.nz}, at::make_generator<at::CPUGeneratorImpl>(seed),
                                 torch::kFloat32);
  c10::InferenceMode inference;
  std::vector<torch::Tensor> chunks;
  for (int64_t start = 0; start < n; start += batch) {
    const int64_t size = std::min(batch, n - start);
    chunks.push_back(forward(z.narrow(0, start, size), labels.narrow(0, start, size)).cpu());
  }
  return torch::cat(chunks);
}

}  // namespace sagan
