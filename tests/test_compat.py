"""The host-compatibility shim: it acts only where its cause is present. Each case runs in a
fresh interpreter, since the shim changes process-wide state."""

import inspect
import json
import re
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path


def _python(*code: str, path: Path | None = None) -> str:
    """Run the pieces of code, each dedented, one after the other in a fresh interpreter."""
    env = {"PATH": "/usr/bin:/bin"}
    if path is not None:
        env["PYTHONPATH"] = str(path)
    source = "\n".join(textwrap.dedent(piece) for piece in code)
    result = subprocess.run([sys.executable, "-c", source], capture_output=True, text=True,
                            env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_host_imports_with_stand_ins_on_this_machine() -> None:
    out = _python("""
        import sys
        from sagan_plugin import compat
        compat.ensure_host_importable()
        import torch_mimicry
        from torch_mimicry.datasets.imagenet import imagenet_utils  # needs torch._six
        import torch, torchvision
        print(compat.is_tensorflow_stand_in(), compat.declared_torchvision_schemas(),
              hasattr(torch.ops.torchvision, "nms"))
        try:
            sys.modules["tensorflow"].compat
        except AttributeError as error:
            print("sagan_plugin.metrics.evaluate" in str(error))
        print(hasattr(sys.modules["tensorflow"], "is_tensor"))  # how matplotlib probes
    """)
    # This machine has no TensorFlow. Its torchvision's compiled ops may not load (PyPI's beside
    # the CPU torch file): then, and only then, the shim declares their schemas itself.
    ops_broken = subprocess.run([sys.executable, "-c", "import torchvision"],
                                capture_output=True, env={"PATH": "/usr/bin:/bin"}).returncode != 0
    assert out.splitlines() == [f"True {ops_broken} True", "True", "False"]


def test_mimicrys_tf_metrics_fail_at_once_without_a_download(tmp_path: Path) -> None:
    """Without TF each of the host's metrics downloaded the Inception graph only to fail on it; now
    its first step says what to use instead, and nothing is fetched or written."""
    out = _python(f"""
        import urllib.request
        def download(*args, **kwargs):
            raise AssertionError("the host tried to download")
        urllib.request.urlretrieve = download
        import torch_mimicry as mmc  # the start-up hook applies the shim
        netG = mmc.nets.sngan.SNGANGenerator32()
        calls = [lambda: mmc.metrics.fid_score(2, 2, netG, "cifar10", log_dir=r"{tmp_path}"),
                 lambda: mmc.metrics.kid_score(2, netG, "cifar10", log_dir=r"{tmp_path}"),
                 lambda: mmc.metrics.inception_score(2, netG, log_dir=r"{tmp_path}")]
        for call in calls:
            try:
                call()
            except AttributeError as error:
                print(type(error).__name__, "sagan_plugin.metrics.evaluate" in str(error))
    """)
    assert out.splitlines() == ["TensorFlowUnavailable True"] * 3
    assert not any(tmp_path.iterdir())


def test_real_tensorflow_and_working_torchvision_are_left_alone(tmp_path: Path) -> None:
    """With a TensorFlow installed and a torchvision that imports, nothing is replaced."""
    (tmp_path / "tensorflow").mkdir()
    (tmp_path / "tensorflow" / "__init__.py").write_text("REAL = True\n")
    (tmp_path / "torchvision").mkdir()
    (tmp_path / "torchvision" / "__init__.py").write_text("WORKING = True\n")
    out = _python("""
        from sagan_plugin import compat
        compat.ensure_host_importable()
        import tensorflow, torchvision, torch
        print(getattr(tensorflow, "REAL", False), compat.is_tensorflow_stand_in(),
              getattr(torchvision, "WORKING", False), compat.declared_torchvision_schemas())
    """, path=tmp_path)
    assert out == "True False True False"


def test_shim_is_applied_once() -> None:
    out = _python("""
        from sagan_plugin import compat
        compat.ensure_host_importable()
        compat.ensure_host_importable()  # a second call must not declare schemas again
        import sagan_plugin.host
        print("ok")
    """)
    assert out == "ok"


def test_a_missing_host_or_torchvision_is_reported_with_the_command_that_installs_it() -> None:
    """This distribution does not declare them (pip would replace torch, or pull TensorFlow)."""
    import torch

    from sagan_plugin.compat import torchvision_install

    expected_torchvision = torchvision_install(torch.__version__)  # its pairing: tested below
    out = _python("""
        import sys
        from sagan_plugin import compat
        for module in ("torchvision", "torch_mimicry"):
            sys.modules[module] = None  # how importlib.util.find_spec sees a missing module
            try:
                compat.ensure_host_importable()
            except ModuleNotFoundError as error:
                print(error.name, "|", error)
            del sys.modules[module]
    """)
    assert out.splitlines() == [
        f"torchvision | torchvision is not installed: run `{expected_torchvision}`",
        "torch_mimicry | torch_mimicry is not installed: run "
        "`pip install --no-deps torch-mimicry==0.1.16 pytorch-fid==0.3.0`",
    ]


def test_a_missing_install_step_is_one_line_with_its_command_at_every_entry() -> None:
    """On the pip-alone path torch, torchvision and the host are installed by hand: a step left
    out is one line naming the command to run, for --help as for a command, not a traceback."""
    rows = []
    for module in ("torch", "torchvision", "torch_mimicry", "omegaconf"):  # fresh each time
        rows += [json.loads(line) for line in _python(f"""
            import contextlib, io, json, sys
            from sagan_plugin.cli import main
            for argv in (["--help"], ["train", "model=sagan", "data=procedural"]):
                sys.modules["{module}"] = None  # as if it were not installed
                err = io.StringIO()
                with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                    try:
                        code = main(argv)
                    except SystemExit as done:  # argparse's --help
                        code = done.code
                del sys.modules["{module}"]
                print(json.dumps(["{module}", argv[0], code, err.getvalue()]))
        """).splitlines()]
    assert len(rows) == 8, rows
    for module, command, code, err in rows:
        if command == "--help" and module in ("torchvision", "torch_mimicry"):
            assert code == 0, err  # the help needs neither
            continue
        assert code == 1 and err.count("\n") == 1, (module, command, code, err)
        assert err.startswith(f"error: {module} is not installed: "), err
        assert "`pip install" in err or "install this package again" in err, err


def test_the_install_commands_agree_with_the_makefile_and_readme() -> None:
    from sagan_plugin import compat

    assert compat.torchvision_install("2.13.0+cpu").endswith(" torchvision==0.28.0")
    assert compat.torchvision_install("2.11.0+cu130").endswith(" torchvision==0.26.0")
    assert compat.torchvision_install("2.7.1").endswith(" torchvision==0.22.1")
    repo = Path(__file__).resolve().parents[1]
    makefile = (repo / "Makefile").read_text()
    torch_pin = re.search(r"^TORCH_PIN := torch==(.*)$", makefile, re.M)[1]
    pins = re.search(r"^NO_DEPS_PINS := (.*)$", makefile, re.M)[1].split()
    torchvision = compat.torchvision_install(torch_pin)
    assert torchvision.split()[-1] in pins
    assert set(compat.HOST_INSTALL.split()[3:]) <= set(pins)
    readme = (repo / "README.md").read_text()
    assert f"pip install torch=={torch_pin}" in readme
    assert torchvision in readme and compat.HOST_INSTALL in readme



# scipy 1.18's sqrtm (the release for Python >= 3.12): no `disp`, the root alone. Set before
# anything imports the FID code that passes disp=False.
SCIPY_1_18 = """
    import scipy.linalg
    scipy_sqrtm = scipy.linalg.sqrtm
    def sqrtm(A):
        return scipy_sqrtm(A)
    scipy.linalg.sqrtm = sqrtm
"""
FID_THREE_WAYS = """
    import numpy as np
    from pytorch_fid.fid_score import calculate_frechet_distance
    from torch_mimicry.metrics.fid import fid_utils
    from sagan_plugin.metrics.scores import frechet_distance, statistics
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(300, 16)), rng.normal(0.2, 1.3, size=(300, 16))
    for fid in (calculate_frechet_distance, fid_utils.calculate_frechet_distance):
        print(abs(fid(*statistics(a), *statistics(b)) / frechet_distance(a, b) - 1) < 1e-9)
"""


PATCHES_WAITING = """
    print(sorted(f.name for f in sys.meta_path if type(f).__name__ == "_PatchOnLoad"))
"""


def test_fid_code_that_passes_sqrtm_disp_runs_on_scipy_1_18() -> None:
    """pytorch-fid 0.3.0 and the host's FID utilities unpack sqrtm(..., disp=False), a TypeError
    on scipy 1.18: both modules get a linalg whose sqrtm takes disp; scipy is left alone."""
    out = _python(SCIPY_1_18, """
        import sys
        import pytorch_fid  # the start-up hook's cue (python -m pytorch_fid starts here)
    """, PATCHES_WAITING, """
        import torch_mimicry  # torchvision's schemas, for pytorch_fid's import of it
    """, FID_THREE_WAYS, """
        import pytorch_fid.fid_score
        print(scipy.linalg.sqrtm is sqrtm, pytorch_fid.fid_score.linalg.sqrtm(np.eye(2) * 4)[0, 0],
              pytorch_fid.fid_score.linalg.eigh is scipy.linalg.eigh)
    """)
    assert out.splitlines() == ["['pytorch_fid.fid_score', 'torch_mimicry.metrics.fid.fid_utils']",
                                "True", "True", "True 2.0 True"]


def test_the_host_alone_brings_the_sqrtm_patch_for_both() -> None:
    out = _python(SCIPY_1_18, """
        import sys
        import torch_mimicry  # loads its FID utilities: patched as they load
        print(type(torch_mimicry.metrics.fid.fid_utils.linalg).__name__)
    """, PATCHES_WAITING)
    assert out.splitlines() == ["_LinalgWithDisp", "['pytorch_fid.fid_score']"]


def test_fid_code_on_a_scipy_whose_sqrtm_takes_disp_is_left_alone() -> None:
    out = _python("""
        import scipy.linalg
        scipy_sqrtm = scipy.linalg.sqrtm
        def sqrtm(A, disp=True, blocksize=64):  # scipy < 1.18's signature, on any scipy
            return scipy_sqrtm(A) if disp else (scipy_sqrtm(A), 0.0)
        scipy.linalg.sqrtm = sqrtm
        import torch_mimicry
    """, FID_THREE_WAYS, """
        import pytorch_fid.fid_score
        print(pytorch_fid.fid_score.linalg is scipy.linalg is fid_utils.linalg)
    """)
    assert out.splitlines() == ["True", "True", "True"]


def test_sqrtm_disp_false_returns_scipys_error_estimate() -> None:
    import numpy as np
    import scipy.linalg

    from sagan_plugin.compat import _LinalgWithDisp

    rng = np.random.default_rng(1)
    a = rng.normal(size=(40, 8))
    matrix = np.cov(a, rowvar=False) @ np.cov(a[::-1] ** 2, rowvar=False)
    root, error = _LinalgWithDisp(scipy.linalg).sqrtm(matrix, disp=False)
    assert np.allclose(root @ root, matrix)
    # scipy's estimate as its documentation gives it, and as scipy < 1.18 returned it
    assert error == np.linalg.norm(root @ root - matrix) ** 2 / np.linalg.norm(matrix)
    assert 0 < error < 1e-20
    if "disp" in inspect.signature(scipy.linalg.sqrtm).parameters:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # disp, where it still is
            scipy_root, scipy_error = scipy.linalg.sqrtm(matrix, disp=False)
        assert np.array_equal(root, scipy_root) and error == scipy_error
