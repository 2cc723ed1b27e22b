"""The wheel: presets inside, the entry points declared, the host declared, no TensorFlow."""

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
    for preset in (REPO / "registry").glob("*/*.yaml"):
        assert f"sagan_plugin/presets/{preset.parent.name}/{preset.name}" in names
    assert "[mimicry.models]" in entry_points
    assert "sagan = sagan_plugin.families:SAGAN" in entry_points
    assert "sagan-plugin = sagan_plugin.cli:main" in entry_points
    requires = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    assert any("torch-mimicry==0.1.16" in line for line in requires)
    assert not any("tensorflow" in line.lower() for line in requires)
