// sagan_sample_ext: the C++ sampler as a Python module.
//   g = sagan_sample_ext.Generator("G.pt2"); images = g.sample(64, seed=0, classes=[3])
#include <climits>
#include <filesystem>
#include <string>
#include <type_traits>

#include <c10/util/Exception.h>
#include <pybind11/stl.h>
#include <pybind11/stl/filesystem.h>
#include <torch/csrc/utils/pybind.h>  // at::Tensor <-> torch.Tensor

#include "sagan/generator.h"
#include "sagan/images.h"

namespace py = pybind11;

namespace {

// pybind11 refuses an argument it cannot convert with a TypeError of four lines and more: the
// signature, then the repr of every argument (a tensor's takes dozens). So the functions take
// objects and convert them here, in one line that names the parameter.
template <typename T>
T argument(const py::handle& value, const std::string& name, const std::string& expected) {
  try {
    return value.cast<T>();
  } catch (const py::cast_error&) {
    if constexpr (std::is_integral_v<T>)
      if (PyLong_Check(value.ptr()))  // the right type, out of range
        throw sagan::UsageError(name + ": expected " + expected + ", got " +
                                std::string(py::str(value)));
    throw py::type_error(name + ": expected " + expected + ", got " +
                         std::string(py::str(py::type::handle_of(value).attr("__name__"))));
  }
}

const std::string kInt = "an integer in [-2^63, 2^63 - 1]";
const std::string kTensor = "a torch.Tensor";

}  // namespace

PYBIND11_MODULE(sagan_sample_ext, m) {
  m.doc() = "LibTorch sampler for sagan-plugin generator exports";
  py::module_::import("torch");  // the tensor conversions need torch's Python types set up
  py::register_exception<sagan::UsageError>(m, "UsageError", PyExc_ValueError);
  // pybind11 would pass on what(): the message plus a C++ backtrace of a dozen lines or more.
  py::register_exception_translator([](std::exception_ptr error) {
    try {
      if (error) std::rethrow_exception(error);
    } catch (const c10::IndexError& e) {
      PyErr_SetString(PyExc_IndexError, sagan::error_message(e.what_without_backtrace()).c_str());
    } catch (const c10::ValueError& e) {
      PyErr_SetString(PyExc_ValueError, sagan::error_message(e.what_without_backtrace()).c_str());
    } catch (const c10::TypeError& e) {
      PyErr_SetString(PyExc_TypeError, sagan::error_message(e.what_without_backtrace()).c_str());
    } catch (const c10::Error& e) {
      PyErr_SetString(PyExc_RuntimeError,
                      sagan::error_message(e.what_without_backtrace()).c_str());
    } catch (const std::runtime_error& e) {
      // The TorchScript interpreter's error, with its traceback; leave the rest to pybind11.
      const std::string message = sagan::error_message(e.what());
      if (message == e.what()) throw;
      PyErr_SetString(PyExc_RuntimeError, message.c_str());
    }
  });

  py::class_<sagan::Generator>(m, "Generator")
      .def(py::init([](const py::object& model, const py::object& device) {
             return std::make_unique<sagan::Generator>(
                 argument<std::filesystem::path>(model, "model", "a path (str or os.PathLike)"),
                 argument<std::string>(device, "device", "a str: auto, cpu, cuda or cuda:<index>"));
           }),
           py::arg("model"), py::arg("device") = "auto")
      .def_property_readonly("info",
                             [](const sagan::Generator& g) {
                               const sagan::ExportInfo& i = g.info();
                               py::dict info;
                               info["format"] = i.format;
                               info["device"] = i.device;
                               info["nz"] = i.nz;
                               info["num_classes"] = i.num_classes;
                               info["resolution"] = i.resolution;
                               info["channels"] = i.channels;
                               if (i.max_batch > 0) info["max_batch"] = i.max_batch;
                               info["step"] = i.step;
                               info["torch_version"] = i.torch_version;
                               info["sha256"] = i.sha256;
                               return info;
                             })
      .def_property_readonly("device", [](const sagan::Generator& g) { return g.device().str(); })
      .def("forward",
           [](sagan::Generator& g, const py::object& z, const py::object& y) {
             const at::Tensor noise = argument<at::Tensor>(z, "z", kTensor);
             const at::Tensor labels = argument<at::Tensor>(y, "y", kTensor);
             py::gil_scoped_release release;
             return g.forward(noise, labels);
           },
           py::arg("z"), py::arg("y"))
      .def("sample",
           [](sagan::Generator& g, const py::object& n, const py::object& seed,
              const py::object& classes, const py::object& batch) {
             const int64_t count = argument<int64_t>(n, "n", kInt);
             // The CLI's and sagan_plugin's range: a uint64_t argument would take 2^63 too.
             const std::string seeds = "an integer in [0, 2^63 - 1]";
             const int64_t value = argument<int64_t>(seed, "seed", seeds);
             if (value < 0)
               throw sagan::UsageError("seed: expected " + seeds + ", got " +
                                       std::to_string(value));
             const auto labels =
                 argument<std::vector<int64_t>>(classes, "classes", "a list of integers");
             const int64_t chunk = argument<int64_t>(batch, "batch", kInt);
             py::gil_scoped_release release;
             return g.sample(count, static_cast<uint64_t>(value), labels, chunk);
           },
           py::arg("n"), py::arg("seed") = 0, py::arg("classes") = py::tuple(),
           py::arg("batch") = 64,
           "float32 (n, C, R, R) in [-1, 1] on the CPU, by the recipe of sagan_plugin.sample");

  m.def("to_uint8",
        [](const py::object& images) {
          return sagan::to_uint8(argument<at::Tensor>(images, "images", kTensor));
        },
        py::arg("images"));
  m.def("image_grid",
        [](const py::object& images) {
          return sagan::image_grid(argument<at::Tensor>(images, "images", kTensor));
        },
        py::arg("images"));
}
