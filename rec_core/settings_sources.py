"""Where settings come from and how their text becomes values: the optional TOML file, the ``REC_*`` variables.

Every value is parsed strictly, so that what an operator wrote is what runs or a :class:`SettingsError` names the
setting: an integer is digits (``1_0``, ``1e3`` and a TOML ``200.9`` are refused, not read as 10, 1000 and 200), and
the data root is never empty (an empty ``REC_DATA_DIR`` meant the working directory).
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

ENV_PREFIX = "REC_"
CONFIG_ENV = "REC_CONFIG"
DEFAULT_CONFIG_FILE = "rec.toml"
TOML_TABLE = "rec"

_INTEGER = re.compile(r"[+-]?[0-9]+")


class SettingsError(ValueError):
    """A setting has a value the product cannot run with."""

    def __init__(self, name: str, reason: str) -> None:
        self.setting = name
        super().__init__(f"{ENV_PREFIX}{name.upper()}: {reason}")


def config_path(env: Mapping[str, str]) -> Path | None:
    """``REC_CONFIG`` (which must exist), else ``rec.toml`` in the working directory if there is one."""
    if env.get(CONFIG_ENV):
        path = Path(env[CONFIG_ENV])
        if not path.is_file():
            raise SettingsError("config", f"file {path} does not exist")
        return path
    default = Path(DEFAULT_CONFIG_FILE)
    return default if default.is_file() else None


def read_toml(path: Path) -> dict[str, Any]:
    """The file's settings by flat name: a flat file, or one whose settings are all in a ``[rec]`` table."""
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError("config", f"{path} is not valid TOML: {exc}") from exc
    if TOML_TABLE in data and isinstance(data[TOML_TABLE], dict):
        outside = sorted(set(data) - {TOML_TABLE})
        if outside:  # they were dropped without a word
            raise SettingsError("config", f"{path} has a [{TOML_TABLE}] table and settings outside it: {outside}")
        data = data[TOML_TABLE]
    named = [key for key in data if key.upper().startswith(ENV_PREFIX)]
    if named:
        raise SettingsError(
            "config",
            f"{path} names settings with the {ENV_PREFIX} prefix; the file takes them without (feed_length): {named}",
        )
    return dict(data)


def _integer(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and _INTEGER.fullmatch(value.strip()):
        return int(value)
    raise ValueError(value)


def _path(value: Any) -> Path:
    if not isinstance(value, str | Path) or not str(value).strip():
        raise ValueError(value)
    return Path(value)


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(value)
    return value


_PARSERS: dict[str, tuple[Callable[[Any], Any], str]] = {
    "int": (_integer, "an integer"),
    "str": (_text, "text"),
    "Path": (_path, "a path, not empty"),
}


def coerce(f: dataclasses.Field[Any], value: Any) -> Any:
    """``value`` (a variable's text, or a TOML value) as field ``f``'s type, or a :class:`SettingsError`."""
    kind = f.type if isinstance(f.type, str) else f.type.__name__
    parse, what = _PARSERS[kind]
    try:
        return parse(value)
    except (TypeError, ValueError):
        raise SettingsError(f.metadata["env"], f"must be {what}, got {value!r}") from None
