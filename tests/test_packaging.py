"""The wheel: presets, entry points and the start-up hook inside; no requirement that pulls torch
or TensorFlow (only the opt-in extra for the host's TF metrics names the host)."""

import re
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_wheel_ships_presets_and_entry_points(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path), str(REPO)], check=True, capture_output=True)
    wheel = next(tmp_path.glob("sagan_plugin-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        dist_info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
        entry_points = archive.read(f"{dist_info}/entry_points.txt").decode()
        metadata = archive.read(f"{dist_info}/METADATA").decode()
        pth = "sagan_plugin_hook.pth"
        pth = archive.read(pth).decode() if pth in names else ""
    for preset in (REPO / "registry").glob("*/*.yaml"):
        assert f"sagan_plugin/presets/{preset.parent.name}/{preset.name}" in names
    assert "[mimicry.models]" in entry_points
    assert "sagan = sagan_plugin.families:SAGAN" in entry_points
    assert "sagan-plugin = sagan_plugin.cli:main" in entry_points
    # The .pth at the root of site-packages, and the module its one line imports.
    assert {"sagan_plugin_hook.pth", "_sagan_plugin_hook.py"} <= names
    assert [line for line in pth.splitlines() if line.startswith("import ")] == [
        "import _sagan_plugin_hook; _sagan_plugin_hook.install()"]
    requires = [line.split(":", 1)[1].strip() for line in metadata.splitlines()
                if line.startswith("Requires-Dist:")]
    required = [r for r in requires if "extra ==" not in r]
    stack = re.compile(r"(torch|torchvision|torch-mimicry|pytorch-fid|tensorflow)\b", re.I)
    assert required and not [r for r in required if stack.match(r)], required
    assert 'torch-mimicry==0.1.16; extra == "tf-metrics"' in requires

