"""Command-line flags made from a config dataclass, so that each knob is written down once: in its dataclass.

A field declared with `option(...)` is also a flag: `--field-name` (or `flag=`), with the field's default and
type, and its help text. The help gets " (default: ...)" appended unless it already says what the default is.
A bool that defaults to False is a switch (`--pretrained`); one that defaults to True is turned off by
`--no-field-name` (`--no-bf16`), and its help text describes that flag. Plain `field(...)`s are not flags.
"""
from __future__ import annotations

from dataclasses import MISSING, field, fields


def option(default=MISSING, *, help: str, flag: str | None = None, choices=None):
    """A dataclass field that is also a command-line flag."""
    return field(default=default, metadata={"help": help, "flag": flag, "choices": choices})


def add_options(parser, config) -> None:
    """Add a flag for each option of the dataclass instance `config`; its values are the flags' defaults."""
    for f in fields(config):
        if "help" not in f.metadata:
            continue
        default, required = getattr(config, f.name), f.default is MISSING and f.default_factory is MISSING
        help = f.metadata["help"].replace("%", "%%")          # argparse formats help texts with %
        if not required and "default" not in help:
            help += " (default: %(default)s)"
        flag = f.metadata["flag"] or "--" + f.name.replace("_", "-")
        if isinstance(default, bool):
            parser.add_argument("--no-" + flag[2:] if default else flag, dest=f.name,
                                action="store_false" if default else "store_true", help=help)
        else:
            metavar = flag[2:].replace("-", "_").upper() if f.metadata["flag"] and not f.metadata["choices"] else None
            parser.add_argument(flag, dest=f.name, required=required, default=None if required else default,
                                type=str if default is None or required else type(default),
                                choices=f.metadata["choices"], metavar=metavar, help=help)


def from_options(cls, args, **others):
    """An instance of the dataclass `cls` from the parsed flags that `add_options` made; `others` sets the rest."""
    return cls(**{f.name: getattr(args, f.name) for f in fields(cls) if "help" in f.metadata}, **others)
