"""benchmarks/trace_summary.py: what a GPU profile of a training step says, from the trace."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys

import pytest
from conftest import REPO


@pytest.fixture
def trace_summary(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import trace_summary

    return trace_summary


def _event(cat: str, name: str, ts: float, dur: float) -> dict:
    return {"ph": "X", "cat": cat, "name": name, "ts": ts, "dur": dur, "pid": 0, "tid": 0}


# Two steps' worth, in microseconds: kernels on two streams overlap (0-15), then the GPU idles
# while the CPU adds (15-20) and while it waits on a sync for .item() (25-40).
TRACE = [
    _event("kernel", "ampere_sgemm_128x64_nn", 0, 10),
    _event("kernel", "void at::native::vectorized_elementwise_kernel<4>", 5, 10),
    _event("cpu_op", "aten::add", 14, 3),
    _event("kernel", "triton_poi_fused_add_relu_0", 20, 5),
    _event("cpu_op", "aten::item", 25, 15),
    _event("cuda_runtime", "cudaStreamSynchronize", 30, 10),
    _event("gpu_memcpy", "Memcpy DtoH (Device -> Pageable)", 40, 2),
    _event("kernel", "flash_fwd_kernel<Flash_fwd_kernel_traits>", 42, 8),
    {"ph": "i", "cat": "user_annotation", "name": "marker", "ts": 60},
]


def test_busy_fraction_idle_stretches_syncs_and_kinds_are_counted_from_the_events(
        trace_summary) -> None:
    s = trace_summary.summarize(TRACE, steps=2)
    assert s["gpu_busy_fraction"] == pytest.approx(30 / 50)  # union 0-15, 20-25, 40-50
    assert s["gpu_window_ms_per_step"] == pytest.approx(50 / 1e3 / 2)
    assert s["longest_idle"][:2] == [{"ms": 15 / 1e3, "cpu_op": "aten::item"},
                                     {"ms": 5 / 1e3, "cpu_op": "aten::add"}]
    assert (s["syncs_per_step"], s["device_to_host_copies_per_step"]) == (0.5, 0.5)
    assert s["kernels_per_step"] == 2
    assert s["kernel_time_by_kind"] == pytest.approx({
        "matmul/conv": 10 / 33, "elementwise/reduction": 10 / 33, "attention": 8 / 33,
        "compiled (Triton)": 5 / 33})
    assert s["top_kernels"][0]["ms_per_step"] == pytest.approx(10 / 1e3 / 2)


@pytest.mark.parametrize("name, kind", [
    ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64", "matmul/conv"),
    ("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_3", "attention"),
    ("void at::native::batch_norm_collect_statistics_kernel<float>", "normalisation"),
    ("void cudnn::bn_fw_tr_1C11_kernel_NCHW<float, float, int, 512, true, 1, true>",
     "normalisation"),
    ("void cudnn::cnn::conv2d_grouped_direct_kernel<false, true, false>", "matmul/conv"),
    ("void at::native::(anonymous namespace)::multi_tensor_apply_kernel<FusedAdam>", "optimizer"),
    ("triton_red_fused_native_batch_norm_backward_12", "compiled (Triton)"),
    ("void splitKreduce_kernel", "elementwise/reduction"),
])
def test_kernels_are_sorted_by_kind(trace_summary, name: str, kind: str) -> None:
    assert trace_summary.kind_of(name) == kind


def test_the_command_reads_a_gzipped_trace_and_a_cpu_trace_has_nothing_to_say(tmp_path) -> None:
    def run(path):
        return subprocess.run([sys.executable, str(REPO / "benchmarks" / "trace_summary.py"),
                               str(path), "--steps", "2"], capture_output=True, text=True)

    gpu, cpu = tmp_path / "gpu.json.gz", tmp_path / "cpu.json"
    with gzip.open(gpu, "wt") as f:
        json.dump({"traceEvents": TRACE}, f)
    cpu.write_text(json.dumps({"traceEvents": [_event("cpu_op", "aten::mm", 0, 5)]}))
    done = run(gpu)
    assert done.returncode == 0 and done.stdout.startswith("GPU busy 60.0% of 0.0 ms"), done
    assert "0.01 ms (CPU in aten::item)" in done.stdout
    done = run(cpu)
    assert done.returncode == 0 and "no GPU kernels in this trace" in done.stdout
    cpu.write_text("{")
    done = run(cpu)
    assert done.returncode == 1 and done.stderr.startswith(f"error: {cpu}: not a readable"), done


def test_a_trace_on_the_profiler_clock_with_nested_work(trace_summary) -> None:
    """Timestamps as a profiler writes them (far from 0): a kernel inside another (a second
    stream), two back to back, and the idle stretch blamed on the innermost CPU operator."""
    t = 1_700_000_000_000.0
    trace = [
        _event("kernel", "ampere_sgemm_128x64_nn", t, 20),  # busy t..t+20
        _event("kernel", "void at::native::vectorized_elementwise_kernel<4>", t + 5, 5),  # inside
        _event("cpu_op", "aten::to", t + 10, 40),  # t+10..t+50, around the idle start (t+20)
        _event("cpu_op", "aten::_local_scalar_dense", t + 18, 10),  # inside it: the innermost
        _event("cuda_runtime", "cudaDeviceSynchronize", t + 28, 20),
        _event("cuda_runtime", "cudaEventSynchronize", t + 48, 1),
        _event("kernel", "triton_poi_fused_add_0", t + 50, 10),  # busy t+50..t+70, no gap
        _event("kernel", "triton_poi_fused_mul_1", t + 60, 10),
    ]
    s = trace_summary.summarize(trace, steps=1)
    assert s["gpu_window_ms_per_step"] == pytest.approx(70 / 1e3)
    assert s["gpu_busy_fraction"] == pytest.approx(40 / 70)  # 20 + 20 of 70 us
    assert s["longest_idle"] == [{"ms": pytest.approx(30 / 1e3),
                                  "cpu_op": "aten::_local_scalar_dense"}]
    assert s["syncs_per_step"] == 2
