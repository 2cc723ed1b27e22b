"""`key=value` tokens of the command line, read as typed configuration values.

    sagan-plugin sample run=runs/demo n=64 out=samples/

OmegaConf reads each value as YAML, which suits numbers and lists but not every key: a path
such as out=0x10 would become 16, and a boolean would take any integer. Tokens are read
against the keys they set, so that a string key keeps the text given and a boolean key takes
true or false.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException
from omegaconf.nodes import BooleanNode, StringNode

from sagan_plugin.errors import UsageError
from sagan_plugin.schema import validate

# model=NAME and data=NAME choose presets, not one key.
SELECTORS = ("model", "data")


def check_tokens(tokens: Sequence[str], command: str = "") -> None:
    """Refuse a token without `=` or without a value: OmegaConf reads `key=` as null, so a value
    that the shell lost (`run_dir=$UNSET`) would silently mean the default."""
    prefix = f"{command}: " if command else ""
    for token in tokens:
        key, sep, value = token.partition("=")
        if not sep or not key:
            raise UsageError(f"{prefix}expected key=value, got {token!r}")
        if not value:
            null = "" if key in SELECTORS else f" ({key}=null where the key may be null)"
            raise UsageError(f"{prefix}{key}= has no value: expected {key}=VALUE{null}")


def refuse_repeated_keys(tokens: Sequence[str], command: str) -> None:
    """A key given twice on one command line is a mistake to report, not a choice to make
    silently (OmegaConf would keep the last value)."""
    seen: dict[str, str] = {}
    for token in tokens:
        key, sep, _ = token.partition("=")
        if not sep:  # not key=value: the command's own check says what is expected
            continue
        if key in seen:
            raise UsageError(f"{command}: {key} is given twice ({seen[key]} and {token}); "
                             "give it once")
        seen[key] = token


def dotlist(tokens: Sequence[str], command: str = "", target: DictConfig | None = None
            ) -> DictConfig:
    """Checked key=value tokens as a config (dotted keys nest); with `target`, the config they
    will be merged into, each value is read as its key's type there."""
    check_tokens(tokens, command)
    prefix = f"{command}: " if command else ""
    try:
        values = OmegaConf.from_dotlist(list(tokens))
    except (OmegaConfBaseException, yaml.YAMLError) as error:  # classes=, gives YAML's error
        text = error.msg if isinstance(error, OmegaConfBaseException) else (
            getattr(error, "problem", None) or str(error))  # YAML's first line is its context
        reason = text.strip().splitlines()[0] if text.strip() else type(error).__name__
        raise UsageError(f"{prefix}cannot parse {' '.join(tokens)!r}: {reason}") from None
    if target is not None:
        _read_as_typed(values, tokens, target, prefix)
    return values


def _read_as_typed(values: DictConfig, tokens: Sequence[str], target: DictConfig,
                   prefix: str) -> None:
    """YAML's reading undone where the key's type says otherwise: a string key (a path, a
    name) keeps its text (0x10, 1e3, 007, yes), a boolean key refuses numbers but 0 and 1."""
    for token in tokens:
        key, _, text = token.partition("=")
        slot, given = _node(target, key), _node(values, key)
        value = given._value() if given is not None else None
        if isinstance(slot, StringNode) and isinstance(value, bool | int | float):
            OmegaConf.update(values, key, text, force_add=True)
        elif (isinstance(slot, BooleanNode) and isinstance(value, int | float)
              and not isinstance(value, bool) and value not in (0, 1)):
            raise UsageError(f"{prefix}{key}={text} is not a boolean: expected true or false")


def _node(cfg: DictConfig, key: str) -> Any:
    """The node at a dotted key, or None where there is none (an unknown key is the merge's to
    refuse, naming the keys there are)."""
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, DictConfig) or part not in node.keys():  # `in` skips ??? keys
            return None
        node = node._get_node(part)
    return node


def run_overrides(tokens: Sequence[str], target: DictConfig | None = None) -> DictConfig:
    """`key=value` tokens for a run configuration, as a config. model.name and data.name are
    refused: model= and data= choose them together with that family's or data set's presets
    and keys, and renaming a section alone would build one thing configured as another."""
    for token in tokens:
        key, _, value = token.partition("=")
        section, _, field_name = key.partition(".")
        if section in SELECTORS and field_name == "name":
            chosen = "model family" if section == "model" else "data set"
            raise UsageError(f"{key} is not an override: {section}={value} chooses the "
                             f"{chosen}, with its presets")
    return dotlist(tokens, target=target)


def parse_overrides(schema: type, argv: Sequence[str], command: str) -> Any:
    """A typed config of `schema` (a dataclass) from key=value tokens; bad input -> UsageError."""
    config = OmegaConf.structured(schema)
    OmegaConf.set_struct(config, True)
    overrides = dotlist(argv, command, target=config)
    try:
        config.merge_with(overrides)
        OmegaConf.resolve(config)  # key=${other}: resolved now, its errors as a bad override's
    except ConfigKeyError as error:  # OmegaConf's message names the schema's class
        fields = list(schema.__dataclass_fields__)
        close = difflib.get_close_matches(error.full_key, fields, n=1)
        raise UsageError(f"{command}: unknown key {error.full_key!r}"
                         + (f" (did you mean {close[0]}?)" if close else "")
                         + f"; keys: {', '.join(fields)}") from None
    except OmegaConfBaseException as error:
        key = getattr(error, "full_key", None) or "?"
        fields = ", ".join(schema.__dataclass_fields__)
        raise UsageError(f"{command}: bad override for {key}: {error.msg.splitlines()[0]} "
                         f"(keys: {fields})") from None
    missing = sorted(OmegaConf.missing_keys(config))
    if missing:
        raise UsageError(f"{command}: {', '.join(missing)}=... is required")
    try:
        validate(config, schema)
    except UsageError as error:
        raise UsageError(f"{command}: {error}") from None
    return config
