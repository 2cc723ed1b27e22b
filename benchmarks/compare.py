"""SAGAN against Mimicry's baselines: a study of configurations x seeds, all scored alike.

    python benchmarks/compare.py study=fashion_mnist_32_cpu       (CPU scale, ~1 hour)
    python benchmarks/compare.py study=fashion_mnist_32           (GPU: full widths, 20k steps)
    python benchmarks/compare.py study=my_study.yaml seeds=5 parallel=4

The same as `sagan-plugin compare` (sagan_plugin/study.py, whose docstring says what a study
is); results go to results/<study>/ and benchmarks/results_table.py puts them in the README.
"""

import sys

from sagan_plugin.cli import main

if __name__ == "__main__":
    sys.exit(main(["compare", *sys.argv[1:]]))
