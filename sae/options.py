"""Settings declared once: a dataclass field with its help text is also its command-line flag.

`option(default, "help")` is a dataclass field whose metadata carries the flag's help (and, where the flag is not
`--field-name`, its name, choices or parser); `add_flags` adds one flag per such field to an argparse parser or
group, and `given_flags` reads back the values the command line gave. Flags default to None, so that a flag left
out leaves the value to whoever resolves it (the dataclass, a domain, a mode such as large-scale training).

Written here rather than taken from a library because argparse has no dataclass reader and the ones on PyPI
(simple-parsing, tyro) would replace our parsers rather than add a group of flags to them.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Callable

_SCALARS = (int, float, str)


def option(default=dataclasses.MISSING, help: str = "", *, flag: str | None = None, choices=None,
           parse: Callable | None = None, metavar: str | None = None, shown_default: str | None = None,
           default_factory=dataclasses.MISSING):
    """A dataclass field that is also a flag. `flag`: its name after the prefix ("lr" gives `--sepen-lr`) or a
    whole name ("--checkpoint-cache"); `parse`: how the flag's text becomes the value (default: the field's type);
    `shown_default`: what the help says the default is, where the field's own default is not the whole story."""
    metadata = {"help": help, "flag": flag, "choices": choices, "parse": parse, "metavar": metavar,
                "shown_default": shown_default}
    return dataclasses.field(default=default, default_factory=default_factory, metadata=metadata)


def same_option(cls, name: str, **changes):
    """The field `name` of dataclass `cls` again (its default and help), for a class that offers the same setting:
    `steps: int = same_option(FinetuneConfig, "steps")`."""
    source = next(f for f in dataclasses.fields(cls) if f.name == name)
    metadata = {**source.metadata, **changes}
    default = metadata.pop("default", source.default)
    return dataclasses.field(default=default, default_factory=source.default_factory, metadata=metadata)


def flag_fields(cls) -> list[dataclasses.Field]:
    """The fields of `cls` that have a flag (those declared with help)."""
    return [f for f in dataclasses.fields(cls) if f.metadata.get("help")]


def flag_name(field: dataclasses.Field, prefix: str = "") -> str:
    name = field.metadata.get("flag") or field.name.replace("_", "-")
    return name if name.startswith("--") else f"--{prefix}{name}"


def _parser_of(cls, field: dataclasses.Field) -> Callable | None:
    if field.metadata.get("parse"):
        return field.metadata["parse"]
    hint = typing.get_type_hints(cls).get(field.name)
    options = [t for t in typing.get_args(hint) if t is not type(None)] if typing.get_args(hint) else [hint]
    return options[0] if len(options) == 1 and options[0] in _SCALARS else None


def _shown_default(field: dataclasses.Field) -> str:
    if field.metadata.get("shown_default") is not None:
        return field.metadata["shown_default"]
    if field.default is dataclasses.MISSING or field.default is None:
        return ""
    return f"{field.default:g}" if isinstance(field.default, float) else str(field.default)


def add_flags(parser, cls, prefix: str = "", dest_prefix: str = "") -> None:
    """One flag per field of `cls` declared with `option(...)`, on `parser` (a parser or an argument group); the
    values land in `args.<dest_prefix><field>`, None when the flag is left out."""
    for field in flag_fields(cls):
        shown = _shown_default(field)
        text = field.metadata["help"] + (f" (default: {shown})" if shown else "")
        kind = _parser_of(cls, field)
        extra = {"type": kind} if kind is not None and kind is not str else {}
        if field.metadata.get("choices"):
            extra["choices"] = field.metadata["choices"]
        if field.metadata.get("metavar"):
            extra["metavar"] = field.metadata["metavar"]
        elif "choices" not in extra:  # the field's name, not the prefixed destination
            extra["metavar"] = field.name.upper()
        parser.add_argument(flag_name(field, prefix), dest=dest_prefix + field.name, default=None,
                            help=text.replace("%", "%%"), **extra)


def given_flags(cls, args: argparse.Namespace, dest_prefix: str = "") -> dict:
    """{field: value} of the flags of `cls` the command line gave."""
    given = {}
    for field in flag_fields(cls):
        value = getattr(args, dest_prefix + field.name, None)
        if value is not None:
            given[field.name] = value
    return given
