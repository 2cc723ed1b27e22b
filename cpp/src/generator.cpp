#include "sagan/generator.h"

#include <algorithm>
#include <array>
#include <cstdio>
#include <fstream>
#include <sstream>

#include <ATen/CPUGeneratorImpl.h>
#include <nlohmann/json.hpp>
#include <openssl/evp.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/cuda.h>
#include <torch/script.h>

namespace sagan {
namespace {

constexpr const char* kExportKind = "sagan-plugin generator export";
constexpr const char* kEmbedded = "sagan.json";  // sagan_plugin/export.py EMBEDDED

std::string first_line(const std::string& text) { return text.substr(0, text.find('\n')); }

std::string sha256_of_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw UsageError("cannot read " + path.string());
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr);
  std::vector<char> buffer(1 << 20);
  while (in) {
    in.read(buffer.data(), static_cast<std::streamsize>(buffer.size()));
    EVP_DigestUpdate(ctx.get(), buffer.data(), static_cast<size_t>(in.gcount()));
  }
  if (in.bad()) throw UsageError("cannot read " + path.string());
  std::array<unsigned char, EVP_MAX_MD_SIZE> digest{};
  unsigned int size = 0;
  EVP_DigestFinal_ex(ctx.get(), digest.data(), &size);
  std::string hex;
  char byte[3];
  for (unsigned int i = 0; i < size; ++i) {
    std::snprintf(byte, sizeof byte, "%02x", digest[i]);
    hex += byte;
  }
  return hex;
}

template <typename T>
T field(const nlohmann::json& doc, const char* key, const std::filesystem::path& sidecar) {
  if (!doc.contains(key)) throw UsageError(sidecar.string() + " has no \"" + key + "\" field");
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
  const std::pair<const char*, int64_t> sidecar_says[] = {
      {"nz", info.nz}, {"num_classes", info.num_classes}, {"resolution", info.resolution},
      {"channels", info.channels}};
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

ExportInfo read_export_info(const std::filesystem::path& model_path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(model_path, ec))
    throw UsageError("model file " + model_path.string() +
                     (std::filesystem::is_directory(model_path, ec) ? " is a folder"
                                                                    : " does not exist") +
                     " (expected a .pt or .pt2 from `sagan-plugin export`)");
  const std::filesystem::path sidecar = model_path.string() + ".json";
  std::ifstream in(sidecar);
  if (!in)
    throw UsageError("no sidecar " + sidecar.string() +
                     " next to the model (write exports with `sagan-plugin export`)");
  nlohmann::json doc;
  try {
    doc = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception&) {
    throw UsageError("sidecar " + sidecar.string() + " is not valid JSON");
  }
  if (!doc.is_object() || doc.value("kind", "") != kExportKind)
    throw UsageError(sidecar.string() + " is not the sidecar of a sagan-plugin generator export");

  ExportInfo info;
  info.format = field<std::string>(doc, "format", sidecar);
  info.device = field<std::string>(doc, "device", sidecar);
  info.nz = field<int64_t>(doc, "nz", sidecar);
  info.num_classes = field<int64_t>(doc, "num_classes", sidecar);
  info.resolution = field<int64_t>(doc, "resolution", sidecar);
  info.channels = field<int64_t>(doc, "channels", sidecar);
  info.step = field<int64_t>(doc, "step", sidecar);
  info.torch_version = field<std::string>(doc, "torch_version", sidecar);
  info.sha256 = field<std::string>(doc, "sha256", sidecar);
  if (info.format != "torchscript" && info.format != "aoti")
    throw UsageError(sidecar.string() + ": format must be \"torchscript\" or \"aoti\", got \"" +
                     info.format + "\"");
  if (info.device != "cpu" && info.device.rfind("cuda", 0) != 0)
    throw UsageError(sidecar.string() + ": device must be cpu or cuda, got \"" + info.device + "\"");
  if (info.nz <= 0 || info.num_classes < 0 || info.resolution <= 0 || info.channels <= 0)
    throw UsageError(sidecar.string() + ": nz, resolution and channels must be positive and " +
                     "num_classes non-negative");
  if (sha256_of_file(model_path) != info.sha256)
    throw UsageError("sha256 of " + model_path.string() + " does not match its sidecar " +
                     sidecar.string() + " (the file changed after export; export it again)");
  return info;
}

torch::Device parse_device(const std::string& name, const ExportInfo& info) {
  if (name == "auto") {
    if (info.format == "aoti") return parse_device(info.device, info);
    return torch::Device(torch::cuda::is_available() ? "cuda" : "cpu");
  }
  std::optional<torch::Device> device;
  try {
    device.emplace(name);
  } catch (const c10::Error&) {
  }
  if (!device || !(device->is_cpu() || device->is_cuda()))
    throw UsageError("device must be cpu, cuda or cuda:<index>, got \"" + name + "\"");
  if (device->is_cuda()) {
    if (!torch::cuda::is_available())
      throw UsageError("device " + name + " asked for, but no CUDA GPU is available to this " +
                       "torch build (use --device cpu)");
    if (device->has_index() &&
        device->index() >= static_cast<int>(torch::cuda::device_count()))
      throw UsageError("device " + name + " does not exist (" +
                       std::to_string(torch::cuda::device_count()) + " CUDA devices)");
  }
  return *device;
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
    torch::jit::ExtraFilesMap extra{{kEmbedded, ""}};
    try {
      script_ = std::make_unique<torch::jit::Module>(
          torch::jit::load(model_path.string(), device_, extra));
    } catch (const c10::Error& e) {
      throw UsageError("cannot load " + model_path.string() +
                       " as TorchScript: " + first_line(e.what_without_backtrace()));
    }
    script_->eval();
    check_embedded(info_, extra[kEmbedded], model_path);
    return;
  }
  if (torch::Device(info_.device).type() != device_.type())
    throw UsageError(model_path.string() + " is an AOTInductor package compiled for " +
                     info_.device + "; export it again with device=" + device +
                     " or sample with --device " + info_.device);
  try {
    const c10::DeviceIndex index = device_.has_index() ? device_.index() : -1;
    package_ = std::make_unique<torch::inductor::AOTIModelPackageLoader>(
        model_path.string(), "model", false, 1, index);
  } catch (const c10::Error& e) {
    throw UsageError("cannot load " + model_path.string() +
                     " as an AOTInductor package: " + first_line(e.what_without_backtrace()));
  }
  const auto metadata = package_->get_metadata();
  const auto embedded = metadata.find(kEmbedded);
  check_embedded(info_, embedded == metadata.end() ? "" : embedded->second, model_path);
}

Generator::~Generator() = default;

torch::Tensor Generator::forward(const torch::Tensor& z, const torch::Tensor& y) {
  std::vector<torch::Tensor> inputs{z.to(device_), y.to(device_)};
  if (script_) return script_->forward({inputs[0], inputs[1]}).toTensor();
  return package_->run(inputs).at(0);
}

torch::Tensor Generator::sample(int64_t n, uint64_t seed, const std::vector<int64_t>& classes,
                                int64_t batch) {
  if (batch <= 0)
    throw UsageError("batch must be a positive number of images, got " + std::to_string(batch));
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
