"""The `sagan-plugin` command: subcommands that take `key=value` overrides.

    sagan-plugin train model=sagan data=fashion_mnist train.steps=2000
"""

from __future__ import annotations

import argparse
import importlib
import sys

from sagan_plugin.errors import UsageError

# Subcommand -> "module:function" taking the list of key=value tokens; imported on use only.
COMMANDS = {
    "train": ("sagan_plugin.train:main", "train a model (model=..., data=..., overrides)"),
    "export": ("sagan_plugin.export:main", "export G for C++ (run=... format=torchscript|aoti)"),
    "sample": ("sagan_plugin.sample:main", "sample PNGs (run=... n=... seed=... classes=...)"),
    "eval": ("sagan_plugin.evaluate:main", "FID/KID/IS offline (run=... metrics=fid,kid,is n=...)"),
    "viz": ("sagan_plugin.viz:main", "class grid and attention maps (run=... out=DIR)"),
    "compare": ("sagan_plugin.study:main", "a study: configurations x seeds, scored alike "
                "(study=NAME)"),
}


def _epilog() -> str:
    from sagan_plugin.presets import load_preset, preset_names
    from sagan_plugin.registry import get_model, list_models

    models = "\n".join(f"  {n:<15} {get_model(n).description}" for n in list_models())
    data = "\n".join(f"  {n:<17} {load_preset('data', n)['data']['resolution']} px, "
                     f"{load_preset('data', n)['data']['num_classes']} classes"
                     for n in preset_names("data"))
    return (f"models (model=NAME):\n{models}\n\ndata sets (data=NAME):\n{data}\n\n"
            "Overrides are key=value with dotted keys, e.g. train.steps=2000 model.ngf=32.")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sagan-plugin", description="SAGAN for torch-mimicry.", epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, description=help_text, epilog=_epilog(),
                       formatter_class=argparse.RawDescriptionHelpFormatter
                       ).add_argument("overrides", nargs="*", metavar="key=value")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    module_name, function_name = COMMANDS[args.command][0].split(":")
    try:
        command = getattr(importlib.import_module(module_name), function_name)
        command(args.overrides)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return UsageError.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
