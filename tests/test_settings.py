import os
import subprocess
import sys
from pathlib import Path

import pytest

from rec_core.settings import Settings, SettingsError
from rec_core.settings_cli import settings_table_markdown
from tests.conftest import ROOT


def test_defaults_are_embedded() -> None:
    s = Settings.load({})
    assert s.paths.data_dir == Path("data")
    assert s.paths.milvus_uri == ""  # Milvus Lite, a file per snapshot
    assert (s.api.port, s.batch.feed_length, s.model.embedding_dim) == (3002, 500, 64)


def test_environment_overrides_toml(tmp_path: Path) -> None:
    cfg = tmp_path / "rec.toml"
    cfg.write_text('[rec]\napi_port = 4000\nfeed_length = 100\ndata_dir = "/srv/rec"\n')
    s = Settings.load({"REC_CONFIG": str(cfg), "REC_FEED_LENGTH": "250"})
    assert s.api.port == 4000
    assert s.batch.feed_length == 250
    assert s.paths.data_dir == Path("/srv/rec")
    assert s.paths.lake_dir == Path("/srv/rec/lake")


@pytest.mark.parametrize(
    ("env", "named", "reason"),
    [
        ({"REC_API_PORT": "abc"}, "REC_API_PORT", "integer"),
        ({"REC_API_PORT": "0"}, "REC_API_PORT", "at least 1"),
        ({"REC_FEED_LENGTH": "1000001"}, "REC_FEED_LENGTH", "at most"),
        ({"REC_CURSOR_SECRET": "short"}, "REC_CURSOR_SECRET", "16 characters"),
        ({"REC_LOG_LEVEL": "LOUD"}, "REC_LOG_LEVEL", "DEBUG"),
        ({"REC_MILVUS_URI": "milvus.txt"}, "REC_MILVUS_URI", "server URL"),
        ({"REC_MILVUS_URI": "/srv/milvus.db"}, "REC_MILVUS_URI", "one file per snapshot"),
        ({"REC_EMBEDING_DIM": "64"}, "REC_EMBEDING_DIM", "unknown setting"),
        ({"REC_CONFIG": "/nonexistent/rec.toml"}, "REC_CONFIG", "does not exist"),
        ({"REC_DATA_URI": "/srv/lake"}, "REC_DATA_URI", "s3://bucket"),
        ({"REC_DATA_URI": "s3:///prefix"}, "REC_DATA_URI", "s3://bucket"),
        ({"REC_S3_ACCESS_KEY_ID": "key"}, "REC_S3_SECRET_ACCESS_KEY", "together"),
        ({"REC_S3_SECRET_ACCESS_KEY": "secret"}, "REC_S3_ACCESS_KEY_ID", "together"),
        ({"REC_SNAPSHOTS_KEEP": "1_0"}, "REC_SNAPSHOTS_KEEP", "integer"),  # int() read it as 10
        ({"REC_FEED_LENGTH": "1e3"}, "REC_FEED_LENGTH", "integer"),
        ({"REC_DATA_DIR": ""}, "REC_DATA_DIR", "not empty"),  # it meant the working directory
        ({"REC_DATA_DIR": "  "}, "REC_DATA_DIR", "not empty"),
        ({"REC_SEED": str(2**64)}, "REC_SEED", "at most"),  # training died later, naming neither
    ],
)
def test_bad_settings_name_the_setting(env: dict[str, str], named: str, reason: str) -> None:
    with pytest.raises(SettingsError) as err:
        Settings.load(env)
    assert str(err.value).startswith(named)
    assert reason in str(err.value)


def test_bad_toml_names_the_file(tmp_path: Path) -> None:
    cfg = tmp_path / "rec.toml"
    cfg.write_text("api_port = [")
    with pytest.raises(SettingsError, match="not valid TOML"):
        Settings.load({"REC_CONFIG": str(cfg)})


@pytest.mark.parametrize(
    ("toml", "reason"),
    [
        ("feed_length = 200.9\n", "REC_FEED_LENGTH: must be an integer"),  # read as 200
        ("feed_length = 1e3\n", "REC_FEED_LENGTH: must be an integer"),
        ("feed_length = true\n", "REC_FEED_LENGTH: must be an integer"),
        ("log_level = 10\n", "REC_LOG_LEVEL: must be text"),
        ("snapshots_keep = 7\n[rec]\nfeed_length = 100\n", "settings outside it: ['snapshots_keep']"),  # dropped
        ("REC_FEED_LENGTH = 100\n", "the file takes them without"),  # was "REC_REC_FEED_LENGTH"
    ],
)
def test_a_toml_value_is_taken_as_written_or_refused(tmp_path: Path, toml: str, reason: str) -> None:
    cfg = tmp_path / "rec.toml"
    cfg.write_text(toml)
    with pytest.raises(SettingsError) as err:
        Settings.load({"REC_CONFIG": str(cfg)})
    assert reason in str(err.value), err.value


def test_integers_in_either_source_read_as_written(tmp_path: Path) -> None:
    cfg = tmp_path / "rec.toml"
    cfg.write_text("feed_length = 300\n")
    assert Settings.load({"REC_CONFIG": str(cfg)}).batch.feed_length == 300
    assert Settings.load({"REC_FEED_LENGTH": " +250 "}).batch.feed_length == 250
    assert Settings.load({"REC_SEED": str(2**32 - 1)}).seed == 2**32 - 1


def test_milvus_server_uri_accepted() -> None:
    s = Settings.load({"REC_MILVUS_URI": "http://milvus:19530"})
    assert s.paths.milvus_uri == "http://milvus:19530"


def test_object_store_settings_and_the_secret_is_masked() -> None:
    s = Settings.load(
        {
            "REC_DATA_URI": "s3://recs/team-a",
            "REC_S3_ENDPOINT": "http://minio:9000",
            "REC_S3_ACCESS_KEY_ID": "rec",
            "REC_S3_SECRET_ACCESS_KEY": "do-not-print-me",
        }
    )
    assert s.paths.object_store and not Settings.load({}).paths.object_store
    printed = s.as_dict()
    assert printed["s3_secret_access_key"] == "***" and "do-not-print-me" not in str(printed)
    assert printed["data_uri"] == "s3://recs/team-a"


def test_readme_documents_every_setting() -> None:
    """The README says its table is what ``--markdown`` prints: word for word, or the two drift apart (the code
    once said snapshots stay under the data root with REC_DATA_URI set, the README rightly that they do not)."""
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    assert settings_table_markdown().strip() in readme, "run `python -m rec_core.settings --markdown` into README"


def test_the_command_line_prints_the_effective_settings_masked_and_the_table(tmp_path: Path) -> None:
    env = {**os.environ, "REC_DATA_DIR": str(tmp_path), "REC_CURSOR_SECRET": "s" * 20, "PYTHONPATH": str(ROOT)}
    shown = subprocess.run([sys.executable, "-m", "rec_core.settings"], env=env, capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    assert f"REC_DATA_DIR={tmp_path}" in shown.stdout.splitlines() and "REC_CURSOR_SECRET=***" in shown.stdout
    table = subprocess.run([sys.executable, "-m", "rec_core.settings", "--markdown"], env=env, capture_output=True)
    assert table.stdout.decode().strip() == settings_table_markdown()
    bad = subprocess.run(
        [sys.executable, "-m", "rec_core.settings"], env={**env, "REC_API_PORT": "x"}, capture_output=True, text=True
    )
    assert bad.returncode == 2 and "REC_API_PORT" in bad.stderr
