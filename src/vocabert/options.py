"""Command-line options declared on the settings they set: fields of a settings dataclass.

A field made with :func:`option` is both a setting and its command-line option, so its default, its help
text and its spelling live in one place. :func:`add_options` turns the dataclass into argparse arguments,
:func:`settings_from_args` turns the parsed arguments back into the dataclass::

    @dataclass(frozen=True)
    class MineSettings:
        budget: int = option(100_000, "maximum vocabulary entries")

    add_options(parser, MineSettings)  # --budget BUDGET  maximum vocabulary entries (default: 100000)
    settings_from_args(MineSettings, parser.parse_args(["--budget", "5000"]))  # MineSettings(budget=5000)

An option's flag is ``--`` and the field's name with dashes unless ``flag`` says otherwise. Its value is kept
under the flag's name (``--teacher-batch-size``: ``args.teacher_batch_size``), less the ``no-`` of a flag
that turns a setting off (``--no-dedup``: ``args.dedup``). This module imports nothing from the package.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Collection, Mapping
from typing import Any, TypeVar

T = TypeVar("T")
_OPTION = "vocabert.option"  # the key of an option's spelling and help in a field's metadata


def option(
    default: Any = dataclasses.MISSING,
    help: str = "",
    *,
    flag: str | None = None,
    default_factory: Any = dataclasses.MISSING,
    **argparse_kwargs: Any,
) -> Any:
    """A dataclass field that is also a command-line option.

    ``help`` gets `` (default: ...)`` added unless it says its default itself, the default is None, or the
    option is an on/off flag or a repeated one (``action="append"``). ``argparse_kwargs`` (type, choices,
    metavar, action, nargs) go to ``add_argument``; the type is the default's unless given. A boolean is a
    flag that turns its default around: ``--access-log`` turns a False on, ``flag="--no-dedup"`` a True off.
    A field without a default is a required option."""
    metadata = {_OPTION: {"flag": flag, "help": help, **argparse_kwargs}}
    return dataclasses.field(default=default, default_factory=default_factory, metadata=metadata)


def option_fields(cls: type) -> list[dataclasses.Field]:
    """The fields of a settings dataclass that are command-line options, in order."""
    return [f for f in dataclasses.fields(cls) if _OPTION in f.metadata]


def flag_of(f: dataclasses.Field) -> str:
    return f.metadata[_OPTION]["flag"] or "--" + f.name.replace("_", "-")


def default_of(f: dataclasses.Field) -> Any:
    return f.default if f.default_factory is dataclasses.MISSING else f.default_factory()


def _action_of(f: dataclasses.Field) -> Any:
    default = default_of(f)
    implied = ("store_false" if default else "store_true") if isinstance(default, bool) else None
    return f.metadata[_OPTION].get("action", implied)


def dest_of(f: dataclasses.Field) -> str:
    """The name argparse keeps the option's value under (see the module's docstring)."""
    name = flag_of(f).removeprefix("--")
    if _action_of(f) == "store_false":
        name = name.removeprefix("no-")
    return name.replace("-", "_")


def add_options(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type,
    defaults: Mapping[str, Any] | None = None,
    skip: Collection[str] = (),
) -> None:
    """One argument per option field of ``cls`` but those named in ``skip``; ``defaults`` (by field name,
    e.g. a preset's) replace the dataclass's defaults."""
    for f in option_fields(cls):
        if f.name in skip:
            continue
        kwargs = {k: v for k, v in f.metadata[_OPTION].items() if k not in ("flag", "help")}
        default = (defaults or {}).get(f.name, default_of(f))
        action = kwargs["action"] = _action_of(f)
        if default is dataclasses.MISSING:  # a setting without a default: a required option
            kwargs["required"], default = True, None
        elif action is None and default is not None and "type" not in kwargs:
            kwargs["type"] = type(default)
        help_text = f.metadata[_OPTION]["help"]
        if not (default is None or action in ("store_true", "store_false", "append") or "(default" in help_text):
            help_text = f"{help_text} (default: %(default)s)".lstrip()
        parser.add_argument(flag_of(f), dest=dest_of(f), default=default, help=help_text, **kwargs)


def settings_from_args(cls: type[T], args: argparse.Namespace) -> T:
    """``cls`` made from parsed arguments; a field whose option the command lacks keeps its default."""
    return cls(**{f.name: getattr(args, dest_of(f)) for f in option_fields(cls) if hasattr(args, dest_of(f))})
