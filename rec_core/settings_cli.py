"""``python -m rec_core.settings``: the effective settings, one ``REC_*=value`` a line (secrets masked), or with
``--markdown`` the README's table of every setting."""

from __future__ import annotations

import sys

from rec_core.settings import ENV_PREFIX, Settings, SettingsError, flat_fields


def settings_table_markdown() -> str:
    """The README's table of every setting: variable, default, meaning."""
    rows = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for name, (_, f) in flat_fields().items():
        default = f.default if f.default != "" else "(empty)"
        rows.append(f"| `{ENV_PREFIX}{name.upper()}` | `{default}` | {f.metadata['doc']} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if "--markdown" in args:
        print(settings_table_markdown())
        return 0
    try:
        settings = Settings.load()
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for key, value in settings.as_dict().items():
        print(f"{ENV_PREFIX}{key.upper()}={value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
