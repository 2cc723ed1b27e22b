// Checks of an export's file that torch's loaders do not make, run before loading it: a
// damaged file must be refused in one line, not load as wrong weights or end the process.
#include "archive_checks.h"

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <tuple>
#include <vector>

#include <elf.h>

#include <caffe2/serialize/inline_container.h>
#include <openssl/evp.h>
#include <torch/csrc/jit/serialization/storage_context.h>
#include <torch/csrc/jit/serialization/unpickler.h>
#include <torch/script.h>

#include "sagan/generator.h"

namespace sagan {

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

// torch::jit::load gives each tensor storage the size its pickle states but reads its record
// into a buffer of the record's own size: a record cut short (an archive damaged, its sidecar's
// sha256 then made to match) loads as a tensor reaching past the end of that buffer, its weights
// whatever memory lies there, with no error. So the pickles are read once more, without the
// records themselves, and each storage's size compared with its record's. An archive that
// this reading cannot follow is left to torch::jit::load to judge.
void check_tensor_records(const std::filesystem::path& model_path) {
  std::vector<std::tuple<std::string, std::size_t, std::size_t>> records;  // name, size, needed
  try {
    caffe2::serialize::PyTorchStreamReader reader(model_path.string());
    // Classes as empty stand-ins: only the storages matter here.
    auto unit = std::make_shared<torch::jit::CompilationUnit>();
    const auto resolve = [&](const c10::QualifiedName& name) -> c10::StrongTypePtr {
      if (const auto known = unit->get_class(name)) return {unit, known};
      try {
        return {unit, torch::jit::Unpickler::defaultTypeParser(name.qualifiedName())};
      } catch (const std::exception&) {
        const auto type = c10::ClassType::create(name, unit);
        unit->register_type(type);
        return {unit, type};
      }
    };
    for (const std::string archive : {"constants", "data"}) {
      if (!reader.hasRecord(archive + ".pkl")) continue;
      at::DataPtr pickle;
      std::size_t size = 0, position = 0;
      std::tie(pickle, size) = reader.getRecord(archive + ".pkl");
      const auto read = [&](char* buffer, std::size_t n) {
        n = std::min(n, size - position);
        std::memcpy(buffer, static_cast<const char*>(pickle.get()) + position, n);
        position += n;
        return n;
      };
      std::vector<std::string> keys;
      auto context = std::make_shared<torch::jit::DeserializationStorageContext>();
      torch::jit::Unpickler unpickler(
          read, resolve,
          [](const c10::StrongTypePtr& type, const c10::IValue&) {
            return c10::ivalue::Object::create(type, 0);
          },
          [&](const std::string& key) {
            keys.push_back(key);
            return at::DataPtr();  // no data: storages on the CPU, never read
          },
          c10::Device(c10::kCPU), false, torch::jit::Unpickler::defaultTypeParser, context);
      unpickler.set_version(reader.version());
      unpickler.parse_ivalue();
      for (const std::string& key : keys)
        records.emplace_back(archive + "/" + key, reader.getRecordSize(archive + "/" + key),
                             context->getStorage(key).nbytes());
    }
  } catch (const std::exception&) {
    return;
  }
  for (const auto& [record, size, needed] : records)
    if (size != needed)
      throw UsageError("cannot load " + model_path.string() + " as TorchScript: its record " +
                       record + " holds " + std::to_string(size) + " bytes where its tensor " +
                       "takes " + std::to_string(needed) +
                       " (the archive is damaged; export it again)");
}

// dlopen maps the segments of a package's shared library, which holds its code and its weights,
// without checking that the file holds them all: a library cut short ends the process with
// SIGBUS at the first touch of a page past its end, or, within the last page, reads zeros for
// the bytes missing. So every segment to be mapped must lie within the library. A library that
// is no 64-bit ELF file is left to the loader to refuse.
void check_shared_libraries(const std::filesystem::path& model_path) {
  std::vector<std::tuple<std::string, uint64_t, uint64_t>> libraries;  // record, size, needed
  try {
    caffe2::serialize::PyTorchStreamReader reader(model_path.string());
    for (const std::string& record : reader.getAllRecords()) {
      if (record.size() < 3 || record.compare(record.size() - 3, 3, ".so") != 0) continue;
      const std::size_t size = reader.getRecordSize(record);
      // The ELF header and the program headers come first: 4 KiB holds them.
      std::vector<char> head(std::min<std::size_t>(size, 4096));
      if (head.empty()) continue;
      head.resize(reader.createChunkReaderIter(record, size, head.size()).next(head.data()));
      Elf64_Ehdr elf;
      if (head.size() < sizeof elf) continue;
      std::memcpy(&elf, head.data(), sizeof elf);
      if (std::memcmp(elf.e_ident, ELFMAG, SELFMAG) != 0 ||
          elf.e_ident[EI_CLASS] != ELFCLASS64 || elf.e_phentsize != sizeof(Elf64_Phdr) ||
          elf.e_phoff > head.size() ||
          elf.e_phnum * sizeof(Elf64_Phdr) > head.size() - elf.e_phoff)
        continue;
      uint64_t needed = 0;
      for (std::size_t i = 0; i < elf.e_phnum; ++i) {
        Elf64_Phdr segment;
        std::memcpy(&segment, head.data() + elf.e_phoff + i * sizeof segment, sizeof segment);
        if (segment.p_type == PT_LOAD)
          needed = std::max<uint64_t>(needed, segment.p_offset + segment.p_filesz);
      }
      libraries.emplace_back(record, size, needed);
    }
  } catch (const std::exception&) {
    return;
  }
  for (const auto& [record, size, needed] : libraries)
    if (needed > size)
      throw UsageError("cannot load " + model_path.string() + " as an AOTInductor package: " +
                       "its library " + record + " holds " + std::to_string(size) +
                       " bytes where its segments take " + std::to_string(needed) +
                       " (the package is damaged; export it again)");
}

}  // namespace sagan
