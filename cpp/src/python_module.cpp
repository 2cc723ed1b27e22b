// sagan_sample_ext: the C++ sampler as a Python module.
//   g = sagan_sample_ext.Generator("G.pt2"); images = g.sample(64, seed=0, classes=[3])
#include <climits>

#include <c10/util/Exception.h>
#include <pybind11/stl.h>
#include <torch/csrc/utils/pybind.h>  // at::Tensor <-> torch.Tensor

#include "sagan/generator.h"
#include "sagan/images.h"

namespace py = pybind11;

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
      .def(py::init([](const std::string& model, const std::string& device) {
             return std::make_unique<sagan::Generator>(model, device);
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
      .def("forward", &sagan::Generator::forward, py::arg("z"), py::arg("y"),
           py::call_guard<py::gil_scoped_release>())
      .def("sample",
           [](sagan::Generator& g, int64_t n, const py::int_& seed,
              const std::vector<int64_t>& classes, int64_t batch) {
             // The CLI's and sagan_plugin's range: a uint64_t argument would take 2^63 too.
             int overflow = 0;
             const long long value = PyLong_AsLongLongAndOverflow(seed.ptr(), &overflow);
             if (overflow || value < 0)
               throw sagan::UsageError("seed: expected an integer in [0, 2^63 - 1], got " +
                                       std::string(py::str(seed)));
             py::gil_scoped_release release;
             return g.sample(n, static_cast<uint64_t>(value), classes, batch);
           },
           py::arg("n"), py::arg("seed") = 0, py::arg("classes") = std::vector<int64_t>{},
           py::arg("batch") = 64,
           "float32 (n, C, R, R) in [-1, 1] on the CPU, by the recipe of sagan_plugin.sample");

  m.def("to_uint8", &sagan::to_uint8, py::arg("images"));
  m.def("image_grid", &sagan::image_grid, py::arg("images"));
}
