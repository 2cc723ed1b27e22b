"""Write the README's study tables from the committed results (results/<study>/study.json).

    python benchmarks/results_table.py           rewrite README.md's blocks
    python benchmarks/results_table.py --check   exit 1 if README.md differs from the JSON
    ... --results DIR                             the studies in DIR/<study>/ instead

Each study's table sits between `<!-- study:NAME -->` and `<!-- /study -->` in README.md;
tests/test_study.py checks that it equals what this script writes. A study the README has no
block for (say one run with out=DIR to try the runner) is skipped, with a note on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sagan_plugin.study_report import REPORT_FILE, TABLE_BEGIN, update_readme

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"


def quoted_results(readme: str, results: Path = REPO / "results") -> list[dict]:
    """The studies in results/ that the README text has a block for; each other one is named
    in a note on stderr."""
    payloads = []
    for path in sorted(results.glob(f"*/{REPORT_FILE}")):
        payload = json.loads(path.read_text())
        begin = TABLE_BEGIN.format(name=payload["study"])
        if begin in readme:
            payloads.append(payload)
        else:
            print(f"{path}: no {begin} block in {README.name}; not quoted, skipped",
                  file=sys.stderr)
    return payloads


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare, write nothing")
    parser.add_argument("--results", type=Path, default=REPO / "results",
                        help="the folder of <study>/study.json (default: the repo's results/)")
    args = parser.parse_args(argv)
    if not args.results.is_dir():
        print(f"error: --results {args.results} is not a folder", file=sys.stderr)
        return 2
    text = README.read_text()
    updated = update_readme(text, quoted_results(text, args.results))
    if args.check:
        print("README tables match the results" if updated == text else
              "README tables differ from the results: run benchmarks/results_table.py")
        return int(updated != text)
    README.write_text(updated)
    print(f"wrote {README}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
