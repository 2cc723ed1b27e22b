// sagan_sample_ext: the C++ sampler as a Python module.
//   g = sagan_sample_ext.Generator("G.pt2"); images = g.sample(64, seed=0, classes=[3])
#include <pybind11/stl.h>
#include <torch/csrc/utils/pybind.h>  // at::Tensor <-> torch.Tensor

#include "sagan/generator.h"
#include "sagan/images.h"

namespace py = pybind11;

PYBIND11_MODULE(sagan_sample_ext, m) {
  m.doc() = "LibTorch sampler for sagan-plugin generator exports";
  py::module_::import("torch");  // the tensor conversions need torch's Python types set up
  py::register_exception<sagan::UsageError>(m, "UsageError", PyExc_ValueError);

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
                               info["step"] = i.step;
                               info["torch_version"] = i.torch_version;
                               info["sha256"] = i.sha256;
                               return info;
                             })
      .def_property_readonly("device", [](const sagan::Generator& g) { return g.device().str(); })
      .def("forward", &sagan::Generator::forward, py::arg("z"), py::arg("y"),
           py::call_guard<py::gil_scoped_release>())
      .def("sample", &sagan::Generator::sample, py::arg("n"), py::arg("seed") = 0,
           py::arg("classes") = std::vector<int64_t>{}, py::arg("batch") = 64,
           py::call_guard<py::gil_scoped_release>(),
           "float32 (n, C, R, R) in [-1, 1] on the CPU, by the recipe of sagan_plugin.sample");

  m.def("to_uint8", &sagan::to_uint8, py::arg("images"));
  m.def("image_grid", &sagan::image_grid, py::arg("images"));
}
