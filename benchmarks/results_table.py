"""Write the README's study tables from the committed results (results/<study>/study.json).

    python benchmarks/results_table.py           rewrite README.md's blocks
    python benchmarks/results_table.py --check   exit 1 if README.md differs from the JSON

Each study's table sits between `<!-- study:NAME -->` and `<!-- /study -->` in README.md;
tests/test_study.py checks that it equals what this script writes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sagan_plugin.study_report import update_readme

REPO = Path(__file__).resolve().parents[1]


def committed_results(repo: Path = REPO) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((repo / "results").glob("*/study.json"))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare, write nothing")
    args = parser.parse_args()
    readme = REPO / "README.md"
    text = readme.read_text()
    try:
        updated = update_readme(text, committed_results())
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.check:
        print("README tables match the results" if updated == text else
              "README tables differ from the results: run benchmarks/results_table.py")
        return int(updated != text)
    readme.write_text(updated)
    print(f"wrote {readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
