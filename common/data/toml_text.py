"""Writing TOML values by hand (the standard library reads TOML but does not write it): the one
encoder behind every TOML file fedcredit writes (data specs, drafted schemas, per-party schemas)."""

from __future__ import annotations

import json


def toml_string(value: object) -> str:
    """`value` as a TOML basic string: JSON's string escapes (quotes, backslashes, control
    characters) are TOML's; other characters are kept as they are (files are UTF-8)."""
    return json.dumps(str(value), ensure_ascii=False)


def toml_value(value: object) -> str:
    """A TOML boolean, number, array or (anything else) basic string."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return toml_string(value)
