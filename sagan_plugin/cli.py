"""The `sagan-plugin` command: subcommands that take `key=value` overrides.

    sagan-plugin train model=sagan data=fashion_mnist train.steps=2000
"""

from __future__ import annotations

import argparse
import importlib
import re
import signal
import sys
import warnings
from typing import NoReturn

from sagan_plugin.errors import CommandFailed, PluginWarning, UsageError, first_line
from sagan_plugin.overrides import refuse_repeated_keys
from sagan_plugin.stopping import EXIT_CODES, Interrupted, Terminated

# Subcommand -> ("module:function" taking the key=value tokens, "module:Schema" of its keys,
# help); imported on use only. train's keys come from the composed run configuration.
COMMANDS = {
    "train": ("sagan_plugin.train:main", None, "train a model (model=..., data=..., overrides)"),
    "export": ("sagan_plugin.export:main", "sagan_plugin.export:ExportConfig",
               "export G for C++ (run=... format=torchscript|aoti)"),
    "sample": ("sagan_plugin.sample:main", "sagan_plugin.sample:SampleConfig",
               "sample PNGs (run=... n=... seed=... classes=...)"),
    "eval": ("sagan_plugin.evaluate:main", "sagan_plugin.evaluate:EvalConfig",
             "FID/KID/IS offline (run=... metrics=fid,kid,is n=...)"),
    "viz": ("sagan_plugin.viz:main", "sagan_plugin.viz:VizConfig",
            "class grid and attention maps (run=... out=DIR)"),
    "compare": ("sagan_plugin.study:main", "sagan_plugin.study:CompareOptions",
                "a study: configurations x seeds, scored alike (study=NAME)"),
}
HELP_FLAGS = ("-h", "--help")
# What to change when a command runs out of GPU memory.
MEMORY_ADVICE = {
    "train": "lower train.batch_size (the global batch: torchrun spreads it over GPUs) or set "
             "train.precision=bf16",
    "sample": "lower batch",
    "eval": "lower batch_size",
    "compare": "lower parallel (runs trained at once on the GPU)",
}


def _keys(command: str, argv: list[str]) -> str:
    """The command's keys with their defaults, one line each, from its schema."""
    from sagan_plugin.schema import field_lines

    schema = COMMANDS[command][1]
    if schema is None:  # train: model=NAME / data=NAME on the command line pick the presets
        from sagan_plugin.config import run_key_lines

        lines = run_key_lines([a for a in argv if a.startswith(("model=", "data="))])
    else:
        module, name = schema.split(":")
        lines = list(field_lines(getattr(importlib.import_module(module), name)))
    if command == "compare":
        from sagan_plugin.presets import preset_names

        lines.append(f"\nstudies (study=NAME): {', '.join(preset_names('studies'))}")
    return "keys (key=default  what it is):\n" + "\n".join(lines)


def _epilog() -> str:
    from sagan_plugin.datasets import get_dataset, list_datasets
    from sagan_plugin.registry import get_model, list_models

    models = "\n".join(f"  {n:<15} {get_model(n).description}" for n in list_models())
    data = "\n".join(f"  {n:<17} {get_dataset(n).summary}" for n in list_datasets())
    return (f"models (model=NAME):\n{models}\n\ndata sets (data=NAME):\n{data}\n\n"
            "Overrides are key=value with dotted keys, e.g. train.steps=2000 model.ngf=32.")


class _Parser(argparse.ArgumentParser):
    """argparse, whose errors are one line as every other error here (no usage line)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {self.prog} --help)")


def _parser(argv: list[str]) -> argparse.ArgumentParser:
    """The command line; the help texts, which import the registries, only when asked for."""
    helping = any(flag in argv for flag in HELP_FLAGS)
    parser = _Parser(
        prog="sagan-plugin", description="SAGAN for torch-mimicry.",
        epilog=_epilog() if helping else None,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, _, help_text) in COMMANDS.items():
        epilog = None
        if helping and name in argv:
            epilog = f"{_keys(name, argv)}\n\n{_epilog()}" if name == "train" else _keys(
                name, argv)
        sub.add_parser(name, help=help_text, description=help_text, epilog=epilog,
                       formatter_class=argparse.RawDescriptionHelpFormatter
                       ).add_argument("overrides", nargs="*", metavar="key=value")
    return parser


def _out_of_memory(error: Exception, command: str) -> str | None:
    """One line for torch's CUDA out-of-memory error (a paragraph with advice that does not
    apply here); None for any other error."""
    torch = sys.modules.get("torch")  # not imported: the error cannot be torch's
    if torch is None or not isinstance(error, torch.OutOfMemoryError):
        return None
    text = str(error)
    asked = re.search(r"Tried to allocate ([\d.]+ \w+)", text)
    free = re.search(r"GPU (\d+) has a total capacity of ([\d.]+ \w+) of which ([\d.]+ \w+) "
                     r"is free", text)
    facts = ""
    if asked:
        where = f", {free[3]} of GPU {free[1]}'s {free[2]} free" if free else ""
        facts = f" (asked for {asked[1]} more{where})"
    advice = MEMORY_ADVICE.get(command, "free the GPU's memory (nvidia-smi lists its users)")
    return f"out of GPU memory during {command}{facts}: {advice}"


_python_format_warning = warnings.formatwarning


def _format_warning(message: Warning | str, category: type[Warning], filename: str,
                    lineno: int, line: str | None = None) -> str:
    """Ours as one line, like the errors; the libraries' with the source line they point at."""
    if issubclass(category, PluginWarning):
        return f"warning: {message}\n"
    return _python_format_warning(message, category, filename, lineno, line)


def _options_given(argv: list[str]) -> str | None:
    """What to give instead of a command's first --option (it takes key=value tokens only;
    argparse would refuse the option with the usage line alone); None when there is none."""
    command, tokens = (argv[0], argv[1:]) if argv and argv[0] in COMMANDS else (None, [])
    for i, token in enumerate(tokens):
        if token.startswith("--") and token not in HELP_FLAGS:
            name, _, value = token[2:].partition("=")
            following = tokens[i + 1] if i + 1 < len(tokens) else ""
            if not value and following and not following.startswith("-") and "=" not in following:
                token, value = f"{token} {following}", following
            name = name.replace("-", "_")
            try:
                keys = re.findall(r"^  ([\w.]+)=", _keys(command, tokens), re.MULTILINE)
            except UsageError:  # model=NAME of an unknown family: said once the option is fixed
                keys = []
            meant = [key for key in keys if name in (key, key.rpartition(".")[2])]
            instead = " or ".join(f"{key}={value or 'VALUE'}" for key in meant) or \
                f"KEY=VALUE (`sagan-plugin {command} --help` lists the keys)"
            return f"{command} takes key=value overrides, not options: give {instead} " \
                f"instead of {token!r}"
    return None


def _not_installed(error: ModuleNotFoundError) -> str:
    """One line for a module the environment lacks, with the command that installs it."""
    if "is not installed: run" in str(error):  # compat's, for torchvision and the host
        return first_line(error)
    top = (error.name or "").split(".")[0]
    if top == "torch":
        how = "run `pip install torch==2.13.0` (or keep a torch >= 2.11) first"
    elif top in ("torch_mimicry", "pytorch_fid"):
        from sagan_plugin.compat import HOST_INSTALL  # imports torch, which is there

        how = f"run `{HOST_INSTALL}`"
    else:
        how = "install this package again"
    return f"{top} is not installed: {how} (README \"Installation with pip alone\")"


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(sys.argv[1:] if argv is None else argv)
    except ModuleNotFoundError as error:  # an install step left out: torch, the host, ...
        if (error.name or "").split(".")[0] == "sagan_plugin":
            raise
        print(f"error: {_not_installed(error)}", file=sys.stderr)
        return 1


def _main(argv: list[str]) -> int:
    warnings.formatwarning = _format_warning
    options = _options_given(argv)
    if options:
        print(f"error: {options}", file=sys.stderr)
        return UsageError.exit_code
    try:
        args = _parser(argv).parse_args(argv)
    except UsageError as error:  # e.g. --help for model=NAME of an unknown family
        print(f"error: {error}", file=sys.stderr)
        return UsageError.exit_code
    module_name, function_name = COMMANDS[args.command][0].split(":")
    try:
        refuse_repeated_keys(args.overrides, args.command)
        command = getattr(importlib.import_module(module_name), function_name)
        command(args.overrides)
    except (UsageError, CommandFailed) as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    except OSError as error:  # the file system refused (a full disk, a lost mount)
        where = f"{error.filename}: " if error.filename else ""
        print(f"error: {where}{error.strerror or error}", file=sys.stderr)
        return 1
    except Interrupted as stop:  # SIGTERM or Ctrl-C during training: a checkpoint was saved
        print(f"interrupted: {stop}", file=sys.stderr)
        return stop.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_CODES[signal.SIGINT]
    except Terminated:  # a study's main process, after its runs stopped
        print("terminated", file=sys.stderr)
        return Terminated.exit_code
    except RuntimeError as error:
        message = _out_of_memory(error, args.command)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
