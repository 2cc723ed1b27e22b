"""What the start-up hook costs a Python start, measured without touching the installation.

    python benchmarks/bench_start.py [--starts 50]

`sagan_plugin_hook.pth` runs `_sagan_plugin_hook.install()` in every interpreter that starts in
this environment, before any user code (README "Host compatibility"). Rows:

- the hook's import at start-up, from `python -X importtime -c pass` (median over --starts
  fresh interpreters), beside `site`'s, which runs every .pth file (the hook's included);
- its finder's cost for each later import of a module not yet loaded (timeit of find_spec for
  a name it does not watch), and that times the modules `import torch` loads: what the hook
  adds to a program's imports until the host is imported, when it removes itself.

Prints a table and writes JSON with the machine's description.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import timeit

import torch
from _machine import RESULTS, describe, print_table, run_main, write_json

import _sagan_plugin_hook


def import_times(starts: int) -> dict[str, float]:
    """Median self time of the hook's import and cumulative time of `site`, in microseconds."""
    hook, site = [], []
    for _ in range(starts):
        report = subprocess.run([sys.executable, "-X", "importtime", "-c", "pass"],
                                capture_output=True, text=True, check=True).stderr
        for line in report.splitlines():  # "import time:  317 |  317 |   _sagan_plugin_hook"
            if not line.startswith("import time:") or line.count("|") != 2:
                continue
            self_us, cumulative_us, name = (part.strip() for part in
                                            line.removeprefix("import time:").split("|"))
            if name == "_sagan_plugin_hook":
                hook.append(int(self_us))
            elif name == "site":
                site.append(int(cumulative_us))
    if not hook:
        raise SystemExit("error: the hook was not imported at start-up: is this package "
                         "installed in this interpreter's environment (make install)?")
    return {"hook_import_us": statistics.median(hook), "site_us": statistics.median(site)}


def find_spec_ns() -> float:
    """Best of five timeit runs of the finder's look-up of a name it does not watch."""
    finder = _sagan_plugin_hook.ImportWatcher.find_spec
    runs = timeit.repeat(lambda: finder("not_watched_module"), number=200_000, repeat=5)
    return min(runs) / 200_000 * 1e9


def torch_module_count() -> int:
    code = "import sys; before = len(sys.modules); import torch; print(len(sys.modules) - before)"
    return int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              check=True).stdout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--starts", type=int, default=50, help="fresh interpreters timed")
    parser.add_argument("--json", help="output file (default: results/bench_start_cpu.json)")
    args = parser.parse_args()
    if args.starts < 1:
        parser.error("--starts must be at least 1")
    times = import_times(args.starts)
    lookup_ns = find_spec_ns()
    modules = torch_module_count()
    rows = [("hook import at start-up (us)", f"{times['hook_import_us']:.0f}"),
            ("site, all .pth files (us)", f"{times['site_us']:.0f}"),
            ("finder look-up (ns)", f"{lookup_ns:.0f}"),
            ("modules `import torch` loads", modules),
            ("finder cost over them (us)", f"{lookup_ns * modules / 1e3:.0f}")]
    print_table(["what", "value"], rows)
    write_json(args.json or RESULTS / "bench_start_cpu.json", {
        "machine": describe(torch.device("cpu")), "starts": args.starts, **times,
        "find_spec_ns": lookup_ns, "torch_modules": modules})
    return 0


if __name__ == "__main__":
    run_main(main)
