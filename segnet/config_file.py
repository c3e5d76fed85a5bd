"""Recipes as TOML files (`segnet train --config FILE`, `segnet study --config FILE`), read and written.

A file holds a command's options as keys, spelled as on the command line without the dashes:

    optimizer = "sgd"
    lr = 0.01
    lr-schedule = "poly"
    schedule = "512x1024:8:80000it"     # or a list of entries: ["128x224:16:10", "256x448:8:10"]
    sync-bn = true                      # a --flag/--no-flag option: true or false

Which keys a command takes, and of what type, is the command's to say (cli.py checks each key against
its options); this module reads a file into a flat dict and writes one back (a run folder's
config.toml, the options it ran with).
"""

from __future__ import annotations

import json
import math
import os
import sys
from typing import Any

from segnet.errors import SegnetOptionError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

Scalar = str | int | float | bool


def read_config_file(path: str | os.PathLike) -> dict[str, Scalar | list[Scalar]]:
    """The keys of a TOML file, flat: scalars and lists of scalars.

    Raises:
        SegnetOptionError: the file is missing, unreadable, not TOML, or holds a table.
    """
    where = os.fspath(path)
    try:
        with open(where, "rb") as file:
            data = tomllib.load(file)
    except OSError as error:
        raise SegnetOptionError(f"--config {where}: {error.strerror or error}", where) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise SegnetOptionError(f"{where}: not a valid TOML file ({error})", where) from None
    for key, value in data.items():
        values = value if isinstance(value, list) else [value]
        if any(isinstance(v, (dict, list)) for v in values):
            raise SegnetOptionError(f"{where}: {key}: expected a value or a list of values, not a table or nested "
                                    "list (a recipe's keys are its command's options)", where)
        if any(not isinstance(v, (str, int, float, bool)) for v in values):
            raise SegnetOptionError(f"{where}: {key}: expected text, a number or true/false, not a date or time",
                                    where)
    return data


def config_file_text(values: dict[str, Any], header: str = "") -> str:
    """`values` (scalars and lists of them; None left out) as a TOML file, `header` as its comment lines."""
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    lines += [f"{key} = {_toml_value(value)}" for key, value in values.items() if value is not None]
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return repr(value) if math.isfinite(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML value for {value!r}")
