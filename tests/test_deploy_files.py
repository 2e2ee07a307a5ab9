"""The Dockerfile and docker-compose.yml, checked with what runs without a Docker engine: the compose file's
wiring (services, images, settings, URLs between services, volumes), every REC_* variable against the real
Settings, every Airflow command against Airflow's own CLI parser, hadolint on the Dockerfile, what it publishes
and which secrets it requires, and `docker compose config` where a compose CLI is installed."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
ENV_EXAMPLE = ROOT / ".env.example"
# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?message}, ${VAR?message}
_VARIABLE = re.compile(r"\$\{(\w+)(?:(:?[-?])([^}]*))?\}")
# Names of settings that hold credentials: they must come from the operator, never from a default in the file.
_SECRET_NAME = re.compile(r"SECRET|PASSWORD|FERNET|TOKEN|_KEY(_ID)?$|ROOT_USER$")


def _required_values() -> dict[str, str]:
    """A value for every variable the compose file requires, as an operator's .env would give them."""
    return {name: secrets.token_urlsafe(24) for name in _required_variables()}


def _compose_text() -> str:
    """The compose file without its comment lines (which show ``${VAR:?...}`` as an example)."""
    return "\n".join(line for line in COMPOSE.read_text().splitlines() if not line.lstrip().startswith("#"))


def _required_variables() -> set[str]:
    return {m.group(1) for m in _VARIABLE.finditer(_compose_text()) if m.group(2) in (":?", "?")}


REQUIRED = _required_values()


def _interpolate(value: object, env: dict[str, str] | None = None) -> str:
    """``${...}`` as compose resolves it with ``env`` (default: every required variable set, nothing else)."""
    env = REQUIRED if env is None else env

    def one(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2) or "", m.group(3) or ""
        value = env.get(name)
        if not op:
            return value or ""
        if value is None or (op.startswith(":") and value == ""):
            if op.endswith("?"):
                raise LookupError(f"{name}: {arg}")
            return arg
        return value

    return _VARIABLE.sub(one, str(value))


def _env(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: _interpolate(v) for k, v in env.items()}


@pytest.fixture(scope="module")
def services() -> dict[str, dict]:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def _command(service: dict) -> list[str]:
    cmd = service.get("command") or []
    return cmd.split() if isinstance(cmd, str) else list(cmd)


def _ours(services: dict[str, dict]) -> dict[str, dict]:
    return {name: s for name, s in services.items() if s.get("build")}


def _airflow(services: dict[str, dict]) -> dict[str, dict]:
    return {name: s for name, s in services.items() if _command(s)[:1] == ["airflow"]}


def test_every_service_has_an_image_and_ours_build_one_image_from_the_dockerfile(services: dict[str, dict]) -> None:
    for name, service in services.items():
        assert service.get("image"), f"{name} has no image"
    ours = _ours(services)
    assert {s["image"] for s in ours.values()} == {"shortvideo-rec:latest"}
    for service in ours.values():
        build = service["build"]
        context = ROOT / (build if isinstance(build, str) else build.get("context", "."))
        assert (
            context / (build.get("dockerfile", "Dockerfile") if isinstance(build, dict) else "Dockerfile")
        ).is_file()
    # The parts the issue asks for, by role.
    images = {name: s["image"] for name, s in services.items()}
    assert any("milvusdb/milvus" in i for i in images.values())
    assert any("etcd" in i for i in images.values()) and "minio" in services  # the object store Milvus uses
    assert any(i.startswith("postgres") for i in images.values()) and any(
        i.startswith("redis") for i in images.values()
    )
    commands = {name: _command(s) for name, s in ours.items()}
    for component in (["db", "migrate"], ["api-server"], ["scheduler"], ["dag-processor"]):
        assert any(c[1 : 1 + len(component)] == component for c in commands.values() if c[:1] == ["airflow"]), component
    workers = [n for n, c in commands.items() if c[:3] == ["airflow", "celery", "worker"]]
    assert len(workers) >= 2, workers
    # Distinct hostnames: Airflow records where each task ran by hostname, and fetches its logs from there.
    assert len({services[w].get("hostname", w) for w in workers}) == len(workers)
    api = [n for n, c in commands.items() if c == ["python", "-m", "feed_api"]]
    assert len(api) == 1


def test_every_rec_variable_is_a_real_setting_and_loads(services: dict[str, dict]) -> None:
    from rec_core.settings import Settings, variable_names

    text = COMPOSE.read_text()
    named = set(re.findall(r"\bREC_[A-Z0-9_]+", text))
    fields = set(variable_names())
    assert named, "the compose file wires nothing by REC_* settings"
    assert named <= fields, f"not settings of rec_core.settings.Settings: {sorted(named - fields)}"
    for name, service in _ours(services).items():
        env = {k: v for k, v in _env(service).items() if k.startswith("REC_")}
        settings = Settings.load(env)  # a bad value raises SettingsError naming it
        assert str(settings.paths.data_dir) == "/data", name
        assert urlsplit(settings.paths.milvus_uri).hostname == "milvus" and "milvus" in services, name
    api = next(s for s in services.values() if _command(s) == ["python", "-m", "feed_api"])
    assert _env(api)["REC_API_HOST"] == "0.0.0.0"


def test_airflow_points_at_services_that_exist(services: dict[str, dict]) -> None:
    airflow = _airflow(services)
    assert airflow
    api_server = next(n for n, s in airflow.items() if _command(s)[1] == "api-server")
    cmd = _command(services[api_server])
    api_port = cmd[cmd.index("--port") + 1] if "--port" in cmd else "8080"
    for name, service in airflow.items():
        env = _env(service)
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor", name
        db = urlsplit(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
        assert db.scheme == "postgresql+psycopg2" and db.hostname in services, (name, db)
        assert services[db.hostname]["image"].startswith("postgres")
        backend = urlsplit(env["AIRFLOW__CELERY__RESULT_BACKEND"])
        assert backend.scheme == "db+postgresql+psycopg2" and backend.hostname == db.hostname, name
        broker = urlsplit(env["AIRFLOW__CELERY__BROKER_URL"])
        assert broker.scheme == "redis" and services[broker.hostname]["image"].startswith("redis"), name
        execution = urlsplit(env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"])
        assert execution.hostname == api_server and str(execution.port) == api_port, name
        assert execution.path == "/execution/"
        # Every component signs and checks the same tokens.
        assert env["AIRFLOW__API_AUTH__JWT_SECRET"] and env["AIRFLOW__CORE__DAGS_FOLDER"] == "/app/dags"
    secrets = {_env(s)["AIRFLOW__API_AUTH__JWT_SECRET"] for s in airflow.values()}
    assert len(secrets) == 1


def test_dependencies_volumes_and_shared_storage(services: dict[str, dict]) -> None:
    declared = set(yaml.safe_load(COMPOSE.read_text()).get("volumes") or {})
    for name, service in services.items():
        for dep in service.get("depends_on") or {}:
            assert dep in services, f"{name} depends on unknown service {dep}"
        for mount in service.get("volumes") or []:
            source = mount.split(":")[0]
            assert source in declared or source.startswith((".", "/")), f"{name}: undeclared volume {source}"
    init = next(n for n, s in services.items() if _command(s)[1:3] == ["db", "migrate"])
    for name, service in _airflow(services).items():
        if name != init:
            assert service["depends_on"][init]["condition"] == "service_completed_successfully", name
    # The workers write feeds and vectors where the API reads them: one volume at the data root.
    data_mounts = {
        name: next((m.split(":")[0] for m in s.get("volumes") or [] if m.split(":")[1] == "/data"), None)
        for name, s in _ours(services).items()
    }
    assert len(set(data_mounts.values())) == 1 and None not in data_mounts.values(), data_mounts


def test_airflow_commands_parse_with_airflow_s_own_cli(services: dict[str, dict]) -> None:
    """Each component's command line, parsed by Airflow 3's CLI parser with the Celery executor configured
    (the `celery` group exists only then); a typo in a subcommand or an option fails here."""
    commands = [_command(s)[1:] for s in _airflow(services).values()]
    script = """
import json, sys
from airflow.cli.cli_parser import get_parser
parser = get_parser()
for argv in json.loads(sys.argv[1]):
    args = parser.parse_args(argv)
    assert callable(args.func), argv
print("ok", len(json.loads(sys.argv[1])))
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW__")}
    env.update(AIRFLOW__CORE__EXECUTOR="CeleryExecutor", AIRFLOW__CORE__LOAD_EXAMPLES="False")
    proc = subprocess.run(
        [sys.executable, "-c", script, json.dumps(commands)], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split()[-2:] == ["ok", str(len(commands))]


def _published(service: dict) -> list[tuple[str, str]]:
    """(host address, host port) of each port a service publishes; an address of "" means every interface."""
    out = []
    for entry in service.get("ports") or []:
        if isinstance(entry, dict):  # long syntax
            out.append((str(entry.get("host_ip") or ""), str(entry.get("published") or entry.get("target"))))
            continue
        text = _interpolate(entry).split("/")[0]
        if text.startswith("["):  # [::1]:8080:8080
            host, _, rest = text[1:].partition("]:")
            out.append((host, rest.split(":")[0]))
            continue
        parts = text.split(":")
        # "8080" publishes a random host port on every interface; "h:c" every interface; "ip:h:c" that address.
        out.append(("", parts[0]) if len(parts) <= 2 else (parts[0], parts[1]))
    return out


def _loopback(address: str) -> bool:
    try:
        return address == "localhost" or ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def _assert_only_the_api_is_published(services: dict[str, dict]) -> None:
    api = next(n for n, s in services.items() if _command(s) == ["python", "-m", "feed_api"])
    for name, service in services.items():
        assert service.get("network_mode") != "host", (
            f"{name} shares the host's network: everything it listens on is open"
        )
        if service.get("profiles"):
            continue  # started only on request
        for address, port in _published(service):
            if _loopback(address):
                continue
            assert name == api and port == "3002", f"{name} publishes {port} on {address or 'every interface'}"
    assert ("", "3002") in _published(services[api]) or any(p == "3002" for _, p in _published(services[api]))


def test_only_the_api_port_is_published_by_default(services: dict[str, dict]) -> None:
    _assert_only_the_api_is_published(services)
    # The Airflow UI is reachable from the host itself (an SSH tunnel away), never from the network.
    ui = next(n for n, s in _airflow(services).items() if _command(s)[1] == "api-server")
    assert _published(services[ui]) and all(_loopback(a) for a, _ in _published(services[ui]))
    for role in ("milvus", "minio", "postgres", "redis", "etcd"):
        assert not _published(services[role]), f"{role} is reachable from outside the compose network"


def test_every_secret_is_required_and_has_no_default() -> None:
    text = _compose_text()
    doc = yaml.safe_load(text)
    # Every variable that names a credential is required (`:?`, so empty fails too) wherever it is used.
    for m in _VARIABLE.finditer(text):
        name, op = m.group(1), m.group(2)
        if _SECRET_NAME.search(name):
            assert op == ":?", f"{m.group(0)}: a secret must be required with `:?` and have no default"
            assert m.group(3).strip(), f"{m.group(0)}: say what to do in the message"
    # Every credential-like setting a container gets comes from such a variable, never a literal in the file.
    blocks = [s.get("environment") or {} for s in doc["services"].values()]
    blocks += [v for k, v in doc.items() if k.startswith("x-") and isinstance(v, dict)]
    for block in blocks:
        for key, value in block.items() if isinstance(block, dict) else []:
            if _SECRET_NAME.search(key) and key != "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS":
                assert re.fullmatch(r"\$\{\w+:\?[^}]+\}", str(value)), f"{key}: {value!r} is not a required variable"
            for url in re.findall(r"\w[\w+.-]*://[^\s\"']+", str(value)):
                password = urlsplit(url).password
                if password is not None:
                    assert re.fullmatch(r"\$\{\w+:\?[^}]+\}", password), f"{key}: a password in a URL is a literal"
    assert _required_variables() >= {
        "AIRFLOW_JWT_SECRET",
        "AIRFLOW_API_SECRET_KEY",
        "AIRFLOW_FERNET_KEY",
        "POSTGRES_PASSWORD",
        "MINIO_ROOT_USER",
        "MINIO_ROOT_PASSWORD",
        "REC_CURSOR_SECRET",
    }
    # The one file an operator starts from lists each required variable, empty, with a way to generate it.
    example = ENV_EXAMPLE.read_text()
    listed = dict(re.findall(r"^(\w+)=(.*)$", example, re.M))
    assert set(listed) == _required_variables()
    assert all(v == "" for v in listed.values()), "no secret value belongs in .env.example"
    for name in listed:
        before = example[: example.index(f"\n{name}=")].rsplit("\n\n", 1)[-1]
        assert "python3 -c" in before, f".env.example gives no way to generate {name}"
    assert ".env" in (ROOT / ".dockerignore").read_text().split(), "secrets must stay out of the build context"


def test_generation_commands_in_env_example_give_usable_values() -> None:
    """Run each command .env.example documents; the values satisfy what reads them."""
    from cryptography.fernet import Fernet

    from rec_core.settings import Settings

    example = ENV_EXAMPLE.read_text()
    values = {}
    for block in example.split("\n\n"):
        names = re.findall(r"^(\w+)=$", block, re.M)
        commands = re.findall(r'^#\s+python3 -c "(.+)"$', block, re.M)
        for name, code in zip(names, commands, strict=True):
            values[name] = subprocess.run(
                [sys.executable, "-c", code], capture_output=True, text=True, check=True
            ).stdout.strip()
    assert set(values) == _required_variables()
    Fernet(values["AIRFLOW_FERNET_KEY"].encode())  # raises on a malformed key
    Settings.of(cursor_secret=values["REC_CURSOR_SECRET"])  # 16+ characters
    assert len(values["MINIO_ROOT_USER"]) >= 3 and len(values["MINIO_ROOT_PASSWORD"]) >= 8
    assert re.fullmatch(r"[\w-]+", values["POSTGRES_PASSWORD"]), "it goes into database URLs unescaped"


def test_images_are_pinned_and_minio_has_current_security_fixes(services: dict[str, dict]) -> None:
    for name, service in services.items():
        image = _interpolate(service["image"])
        if service.get("build"):
            continue  # ours, built from ./Dockerfile
        tag = image.split("@")[0].rsplit("/", 1)[-1].partition(":")[2]
        assert tag or "@sha256:" in image, f"{name}: {image} has no tag"
        assert tag != "latest", f"{name}: {image} floats"
    minio = _interpolate(services["minio"]["image"])
    # The community minio/minio images stopped at RELEASE.2025-09-07 (then left Docker Hub): none has the fix for
    # CVE-2025-62506 (RELEASE.2025-10-15T17-29-55Z).
    assert not re.match(r"^(docker\.io/|quay\.io/)?minio/minio[:@]", minio), minio
    release = re.search(r"RELEASE\.(\d{4}-\d{2}-\d{2})", minio)
    assert release and release.group(1) >= "2025-10-15", f"{minio}: not a release with the 2025-10 security fixes"


def _compose_cli() -> list[str] | None:
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def _compose_config(cli: list[str], env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    # An env file of our own, so that an operator's .env in the checkout cannot make this pass or fail.
    env_file = tmp_path / "test.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    clean = {k: v for k, v in os.environ.items() if k not in REQUIRED}
    return subprocess.run(
        [*cli, "-f", str(COMPOSE), "--env-file", str(env_file), "config"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=clean,
        timeout=120,
    )


def test_compose_config_fails_fast_without_secrets_and_validates_with_them(tmp_path: Path) -> None:
    """No Docker engine is needed: `config` interpolates and validates the file on the client."""
    cli = _compose_cli()
    if cli is None:
        pytest.skip(
            "no docker compose CLI here (`apt-get install docker-compose` gives one); the other tests check the file"
        )
    proc = _compose_config(cli, REQUIRED, tmp_path)
    assert proc.returncode == 0, proc.stderr
    rendered = yaml.safe_load(proc.stdout)["services"]
    _assert_only_the_api_is_published(rendered)
    assert _env(rendered["airflow-scheduler"])["AIRFLOW__CORE__FERNET_KEY"] == REQUIRED["AIRFLOW_FERNET_KEY"]
    # Each secret missing (or empty) on its own stops compose, naming it and where to set it.
    for name in sorted(REQUIRED):
        for missing in ({k: v for k, v in REQUIRED.items() if k != name}, {**REQUIRED, name: ""}):
            proc = _compose_config(cli, missing, tmp_path)
            assert proc.returncode != 0, f"compose accepted the file without {name}"
            assert f"{name} is required" in proc.stderr and ".env.example" in proc.stderr, proc.stderr


def test_dockerfile_passes_hadolint_and_installs_from_the_lock() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.M)
    lock = dict(line.split("==", 1) for line in (ROOT / "constraints.txt").read_text().split() if "==" in line)
    torch = re.search(r"--index-url https://download\.pytorch\.org/whl/cpu torch==([\w.]+)", text)
    assert torch and lock["torch"].split("+")[0] == torch.group(1), "the image's torch must be the lock's"
    assert "-c constraints.txt" in text
    assert '["python", "-m", "feed_api"]' in text
    for source in re.findall(r"^COPY (.+) \S+$", text, re.M):
        for path in source.split():
            assert (ROOT / path).exists(), f"COPY {path}: no such file"
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {"data", ".venv", ".git", ".airflow"} <= set(ignored)
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert hadolint, "hadolint is in the dev extra: `make setup` installs it"
    proc = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
