"""What every configuration field accepts, in one place: its type, its range and one line of help.

Fields are dataclass fields made with :func:`option`; OmegaConf checks the types, and
:func:`validate` the ranges, before any command does work or writes a file. `--help` lists the
same fields (:func:`field_lines`), so the documentation cannot drift from what is checked.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from sagan_plugin.errors import UsageError

# torch's generators take seeds below 2^64 (negative ones are wrapped, silently); staying below
# 2^63 leaves room for the seed + rank and seed + epoch that training derives from it.
MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class Rule:
    """A predicate on a field's value and the phrase that names what it accepts."""

    accepts: Callable[[Any], bool]
    expected: str


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def at_least(low: int) -> Rule:
    return Rule(lambda v: _number(v) and v >= low, f"at least {low}")


def between(low: float, high: float, *, low_open: bool = False, high_open: bool = False) -> Rule:
    """low <= v <= high, either end open."""
    def accepts(v: Any) -> bool:
        return (_number(v) and (v > low if low_open else v >= low)
                and (v < high if high_open else v <= high))

    interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    return Rule(accepts, f"in {interval}")


def one_of(*names: str) -> Rule:
    return Rule(lambda v: v in names, f"one of {', '.join(names)}")


POSITIVE = Rule(lambda v: _number(v) and v > 0, "a positive number")
SEED = Rule(lambda v: isinstance(v, int) and 0 <= v <= MAX_SEED, "an integer in [0, 2^63 - 1]")


def option(default: Any, help: str, rule: Rule | None = None) -> Any:
    """A dataclass field with its help line and (optional) rule; null always passes the rule."""
    return field(default=default, metadata={"help": help, "rule": rule})


# The keys by which sample, export and viz pick a run's generator (eval has its own run=:
# there it is one of two sources).
def run_option() -> Any:
    return option(MISSING, "a run folder or a netG checkpoint file")


def step_option() -> Any:
    return option(None, "checkpoint step; null: the latest", at_least(0))


def ema_option() -> Any:
    return option(True, "the EMA weights when the checkpoint has them")


def check(name: str, value: Any, rule: Rule | None) -> None:
    if rule is not None and value is not None and not rule.accepts(value):
        raise UsageError(f"{name} must be {rule.expected}, got {value!r}")


def validate(values: Mapping[str, Any], schema: type, prefix: str = "") -> None:
    """Check every field of `schema` in `values` against its rule; the first miss is an error."""
    for f in dataclasses.fields(schema):
        check(f"{prefix}{f.name}", values[f.name], f.metadata.get("rule"))


def field_lines(schema: type, values: Mapping[str, Any] | None = None,
                prefix: str = "") -> Iterator[str]:
    """One `key=default  help (what it accepts)` line per field, for --help."""
    for f in dataclasses.fields(schema):
        if values is not None:
            default = values[f.name]
        else:
            default = "(required)" if f.default == MISSING else f.default
        yield key_line(f"{prefix}{f.name}", default, f.metadata.get("help", ""),
                       f.metadata.get("rule"))


def key_line(key: str, default: Any, help_text: str, rule: Rule | None = None) -> str:
    if rule is not None:
        help_text = f"{help_text} ({rule.expected})" if help_text else rule.expected
    return f"  {f'{key}={show(default)}':<32} {help_text}".rstrip()


def show(value: Any) -> str:
    """A value as it is written on the command line."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list | tuple):
        return "[" + ",".join(map(show, value)) + "]"
    return str(value)
