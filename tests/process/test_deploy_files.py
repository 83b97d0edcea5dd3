"""The deploy files agree with the code: timings, probe paths and ports, setting names, metrics.

The files are the Dockerfile and deploy/ (compose, the Kubernetes manifests, Prometheus, Grafana).
Everything they are compared with is taken from the code: the setting names and defaults from
the Settings model, the endpoints from a live metrics server, the metric names from a scrape of
a real `python -m shovel`. No network and no container runtime is needed. (`make deploy-check`
runs the linters and validators on the same files.)
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import parse_qsl

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from shovel.service.metrics import Metrics
from shovel.settings import ENV_PREFIX, GRACE_MARGIN_S, ConfigError, Settings, load_settings
from tests.helpers import Shovel, free_port, http_get, metric, wait_until, write_input

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
KUBERNETES_DIR = DEPLOY / "kubernetes"
KUBERNETES = KUBERNETES_DIR / "shovel.yaml"
KUBERNETES_SINK = KUBERNETES_DIR / "shovel-sink.yaml"
PROMETHEUS = DEPLOY / "prometheus" / "prometheus.yml"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "shovel.json"

# The report of the previous stop, exported at the next start (the scrape is of a second run).
LAST_STOP_METRICS = frozenset(
    {
        "shovel_last_stop_exit_code",
        "shovel_last_stop_undelivered_records",
        "shovel_last_stop_duration_seconds",
        "shovel_last_stop_end_timestamp_seconds",
    }
)
# Set by the stopping process moments before it exits: a scrape almost never sees them, so
# alerts and panels about a stop use LAST_STOP_METRICS instead.
PRE_EXIT_METRICS = frozenset({"shovel_undelivered_records", "shovel_shutdown_duration_seconds"})
# Series Prometheus itself adds for every scrape target.
PROMETHEUS_TARGET_METRICS = frozenset(
    {
        "up",
        "scrape_duration_seconds",
        "scrape_samples_scraped",
        "scrape_samples_post_metric_relabeling",
        "scrape_series_added",
    }
)
# How long the orchestrator waits after SIGTERM before SIGKILL when nothing says otherwise:
# `docker stop` / `docker compose stop`, and a pod's terminationGracePeriodSeconds.
DOCKER_DEFAULT_GRACE_S = 10.0
KUBERNETES_DEFAULT_GRACE_S = 30.0
# The slow-stop alerts and colours warn at this fraction of the drain deadline.
SLOW_STOP_FRACTION = 0.8
# Where shovel runs in the deploy files, by the name the tests give each deployment: the
# compose service and the Kubernetes workload (with the Service of the same name). The sink
# ones write into NATS JetStream (SHOVEL_SINK) instead of an output directory of their own.
COMPOSE_SERVICES = {"compose": "shovel", "compose (sink)": "shovel-sink"}
KUBERNETES_WORKLOADS = {"kubernetes": "shovel", "kubernetes (sink)": "shovel-sink"}
DEPLOYMENT_NAMES = ["image (docker run)", *COMPOSE_SERVICES, *KUBERNETES_WORKLOADS]
SINK_DEPLOYMENTS = ["compose (sink)", "kubernetes (sink)"]
# The NATS server release that brought atomic batch publishing (a stream's allow_atomic).
ATOMIC_BATCH_SERVER = (2, 12)


# --- reading the files ---------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str


def dockerfile() -> list[Instruction]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    instructions: list[Instruction] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        if line.lstrip().startswith("#") or not (pending or line.strip()):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        keyword, _, args = (pending + line).strip().partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip()))
        pending = ""
    assert not pending, "the Dockerfile ends in a continuation line"
    return instructions


def runtime_stage() -> list[Instruction]:
    """The instructions of the last stage: the image that runs."""
    instructions = dockerfile()
    last_from = max(i for i, ins in enumerate(instructions) if ins.keyword == "FROM")
    return instructions[last_from + 1 :]


def image_env() -> dict[str, str]:
    """The environment the runtime stage's ENV instructions set."""
    env: dict[str, str] = {}
    for ins in runtime_stage():
        if ins.keyword != "ENV":
            continue
        words = shlex.split(ins.args)
        if all("=" in w for w in words):
            env.update(w.partition("=")[::2] for w in words)
        else:  # the legacy form, ENV NAME VALUE
            env[words[0]] = " ".join(words[1:])
    return env


def build_args() -> set[str]:
    """The names the Dockerfile declares with ARG (build arguments, not runtime settings)."""
    return {
        re.split("[= ]", ins.args, maxsplit=1)[0] for ins in dockerfile() if ins.keyword == "ARG"
    }


def healthcheck_command() -> list[str]:
    """The exec-form command of the runtime stage's HEALTHCHECK."""
    checks = [ins.args for ins in runtime_stage() if ins.keyword == "HEALTHCHECK"]
    assert len(checks) == 1, checks
    _, cmd, command = checks[0].partition(" CMD ")
    assert cmd, f"no CMD in HEALTHCHECK {checks[0]!r}"
    argv = json.loads(command)
    assert isinstance(argv, list), "the HEALTHCHECK command must be in exec form"
    return [str(a) for a in argv]


def yaml_file(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict), path
    return data


def compose_service(name: str) -> dict[str, Any]:
    service = yaml_file(COMPOSE)["services"][name]
    assert isinstance(service, dict)
    return service


def kubernetes_files() -> list[Path]:
    """The Kubernetes manifests, applied together (shovel-sink.yaml writes into the NATS
    cluster that shovel.yaml defines)."""
    return sorted(KUBERNETES_DIR.glob("*.yaml"))


def kubernetes_docs() -> list[dict[str, Any]]:
    return [d for path in kubernetes_files() for d in yaml.safe_load_all(path.read_text()) if d]


def kubernetes_workloads() -> list[dict[str, Any]]:
    """Every object with a pod template: the shovel workloads, the NATS servers, the Jobs."""
    return [d for d in kubernetes_docs() if "template" in d.get("spec", {})]


def kubernetes_workload(name: str) -> dict[str, Any]:
    """The one workload named `name`."""
    workloads = [d for d in kubernetes_workloads() if d["metadata"]["name"] == name]
    assert len(workloads) == 1, [d["kind"] for d in workloads]
    return workloads[0]


def kubernetes_container(name: str) -> dict[str, Any]:
    """The container named shovel of the workload `name`."""
    containers = kubernetes_workload(name)["spec"]["template"]["spec"]["containers"]
    [container] = [c for c in containers if c["name"] == "shovel"]
    assert isinstance(container, dict)
    return container


def kubernetes_service(name: str) -> dict[str, Any]:
    [service] = [
        d for d in kubernetes_docs() if d["kind"] == "Service" and d["metadata"]["name"] == name
    ]
    return service


def shovel_scrape_job() -> dict[str, Any]:
    [job] = [j for j in yaml_file(PROMETHEUS)["scrape_configs"] if j["job_name"] == "shovel"]
    assert isinstance(job, dict)
    return job


def alert_rules() -> list[dict[str, Any]]:
    return [r for g in yaml_file(ALERTS)["groups"] for r in g["rules"] if "alert" in r]


def dashboard() -> dict[str, Any]:
    data = json.loads(DASHBOARD.read_text())
    assert isinstance(data, dict)
    return data


def duration_s(text: str) -> float:
    """A compose duration ("45s", "1m30s", "500ms") in seconds."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", text)
    assert parts, f"not a duration: {text!r}"
    assert "".join(n + u for n, u in parts) == text, f"not a duration: {text!r}"
    return sum(float(n) * units[u] for n, u in parts)


# --- what shovel's settings make of a deployment -----------------------------------------------


@dataclass(frozen=True)
class Deployment:
    name: str
    # The SHOVEL_* environment shovel sees: the image's ENV, overridden by the file's own.
    env: dict[str, str]
    # How long the orchestrator waits after SIGTERM before SIGKILL.
    grace_s: float


def shovel_env(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k.startswith(ENV_PREFIX)}


def compose_env(service: str) -> dict[str, str]:
    environment = compose_service(service).get("environment", {})
    if isinstance(environment, list):  # the NAME=VALUE list form
        environment = dict(e.partition("=")[::2] for e in environment)
    return {str(k): str(v) for k, v in environment.items()}


def kubernetes_env(workload: str) -> dict[str, str]:
    env = kubernetes_container(workload).get("env", [])
    assert all("value" in e for e in env), "the test reads only literal values"
    return {e["name"]: str(e["value"]) for e in env}


def compose_deployment(name: str, service: str) -> Deployment:
    grace = compose_service(service).get("stop_grace_period")
    return Deployment(
        name,
        shovel_env(image_env()) | shovel_env(compose_env(service)),
        DOCKER_DEFAULT_GRACE_S if grace is None else duration_s(str(grace)),
    )


def kubernetes_deployment(name: str, workload: str) -> Deployment:
    pod_grace = kubernetes_workload(workload)["spec"]["template"]["spec"].get(
        "terminationGracePeriodSeconds"
    )
    return Deployment(
        name,
        shovel_env(image_env()) | shovel_env(kubernetes_env(workload)),
        KUBERNETES_DEFAULT_GRACE_S if pod_grace is None else float(pod_grace),
    )


def deployments() -> list[Deployment]:
    return [
        Deployment("image (docker run)", shovel_env(image_env()), DOCKER_DEFAULT_GRACE_S),
        *(compose_deployment(name, service) for name, service in COMPOSE_SERVICES.items()),
        *(kubernetes_deployment(name, w) for name, w in KUBERNETES_WORKLOADS.items()),
    ]


def deployment(name: str) -> Deployment:
    [d] = [d for d in deployments() if d.name == name]
    return d


SettingsOf = Callable[[Deployment], Settings]


@pytest.fixture
def settings_of(monkeypatch: pytest.MonkeyPatch) -> SettingsOf:
    """Builds Settings from exactly a deployment's environment, the way shovel reads it."""

    def build(d: Deployment) -> Settings:
        for name in list(os.environ):
            if name.startswith(ENV_PREFIX):
                monkeypatch.delenv(name)
        for name, value in d.env.items():
            monkeypatch.setenv(name, value)
        return load_settings([])

    return build


def setting_env_names() -> set[str]:
    return {ENV_PREFIX + name.upper() for name in Settings.model_fields}


def default_metrics_port() -> int:
    default = Settings.model_fields["metrics_port"].default
    assert isinstance(default, int)
    return default


# --- grace period and shutdown timeout ---------------------------------------------------------


def check_timing(d: Deployment, settings: Settings) -> None:
    """timeout + margin <= grace period, and shovel is told the orchestrator's grace period."""
    assert "SHOVEL_GRACE_PERIOD_S" in d.env, f"{d.name}: shovel is not told the grace period"
    assert settings.grace_period_s == d.grace_s, (
        f"{d.name}: SHOVEL_GRACE_PERIOD_S is {settings.grace_period_s:g} s, but the "
        f"orchestrator kills {d.grace_s:g} s after SIGTERM"
    )
    assert settings.shutdown_timeout_s + GRACE_MARGIN_S <= d.grace_s, (
        f"{d.name}: a {settings.shutdown_timeout_s:g} s drain deadline does not end "
        f"{GRACE_MARGIN_S:g} s before the kill at {d.grace_s:g} s"
    )


@pytest.mark.parametrize("name", DEPLOYMENT_NAMES)
def test_the_drain_deadline_ends_before_the_kill(name: str, settings_of: SettingsOf) -> None:
    d = deployment(name)
    check_timing(d, settings_of(d))


def test_the_timing_check_fails_on_a_mismatch(settings_of: SettingsOf) -> None:
    def made_up(grace: str | None, timeout: str, kill_s: float) -> Deployment:
        env = {"SHOVEL_SHUTDOWN_TIMEOUT_S": timeout}
        if grace is not None:
            env["SHOVEL_GRACE_PERIOD_S"] = grace
        return Deployment("made up", env, kill_s)

    fits = made_up("45", "30", 45.0)
    check_timing(fits, settings_of(fits))
    killed_later = made_up("45", "30", 60.0)
    with pytest.raises(AssertionError, match="orchestrator kills 60 s after SIGTERM"):
        check_timing(killed_later, settings_of(killed_later))
    untold = made_up(None, "30", 45.0)
    with pytest.raises(AssertionError, match="not told the grace period"):
        check_timing(untold, settings_of(untold))
    # shovel itself refuses a deadline that ends less than the margin before the kill.
    with pytest.raises(ConfigError, match="grace period"):
        settings_of(made_up("45", "41", 45.0))


def test_compose_durations_are_read_exactly() -> None:
    assert duration_s("45s") == 45
    assert duration_s("1m30s") == 90
    assert duration_s("1500ms") == 1.5
    with pytest.raises(AssertionError, match="not a duration"):
        duration_s("45 seconds")


def test_slow_stop_warnings_are_80_percent_of_the_deployed_deadline(
    settings_of: SettingsOf,
) -> None:
    deployed = [*COMPOSE_SERVICES, *KUBERNETES_WORKLOADS]
    timeouts = {settings_of(deployment(n)).shutdown_timeout_s for n in deployed}
    assert len(timeouts) == 1, f"compose and Kubernetes use different timeouts: {timeouts}"
    [timeout] = timeouts
    warn = SLOW_STOP_FRACTION * timeout
    rules = {r["alert"]: r for r in alert_rules()}
    m = re.fullmatch(
        r"\s*shovel_last_stop_duration_seconds\s*>\s*([\d.]+)\s*",
        rules["ShovelLastStopSlow"]["expr"],
    )
    assert m, rules["ShovelLastStopSlow"]["expr"]
    assert float(m.group(1)) == warn
    assert duration_s(rules["ShovelShutdownInProgressLong"]["for"]) == warn
    [panel] = [
        p
        for p in dashboard()["panels"]
        if p["type"] == "stat"
        and any("shovel_last_stop_duration_seconds" in t["expr"] for t in p["targets"])
    ]
    steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert [s["value"] for s in steps] == [None, warn, timeout]


# --- probe paths and ports ---------------------------------------------------------------------


@pytest.mark.parametrize("name", DEPLOYMENT_NAMES)
def test_metrics_listen_on_all_interfaces_on_the_published_port(
    name: str, settings_of: SettingsOf
) -> None:
    settings = settings_of(deployment(name))
    assert settings.metrics_host == "0.0.0.0", f"{name}: unreachable from outside the container"
    if name in COMPOSE_SERVICES:
        published = compose_container_ports(COMPOSE_SERVICES[name])
    elif name in KUBERNETES_WORKLOADS:
        published = kubernetes_container_ports(KUBERNETES_WORKLOADS[name])
    else:
        published = exposed_ports()
    assert published == {settings.metrics_port}, name


def exposed_ports() -> set[int]:
    """The ports the image's EXPOSE instructions name."""
    exposed = [ins.args for ins in runtime_stage() if ins.keyword == "EXPOSE"]
    return {int(p.split("/")[0]) for args in exposed for p in args.split()}


def compose_container_ports(service: str) -> set[int]:
    """The container side of the compose service's published ports."""
    ports = set()
    for p in compose_service(service)["ports"]:
        if isinstance(p, dict):  # the long syntax
            ports.add(int(p["target"]))
        else:  # [[IP:]HOST:]CONTAINER[/PROTOCOL]
            ports.add(int(str(p).rsplit(":", 1)[-1].split("/")[0]))
    return ports


def kubernetes_container_ports(workload: str) -> set[int]:
    return {int(p["containerPort"]) for p in kubernetes_container(workload)["ports"]}


def assert_liveness(port: int, path: str, metrics: Metrics, where: str) -> None:
    """`path` answers 200 whether or not shovel is ready (a drain is not a hang)."""
    for ready in (False, True):
        metrics.ready = ready
        assert http_get(port, path)[0] == 200, f"{where}: {path} with ready={ready}"


def assert_readiness(port: int, path: str, metrics: Metrics, where: str) -> None:
    metrics.ready = False
    assert http_get(port, path)[0] == 503, f"{where}: {path} before ready / while draining"
    metrics.ready = True
    assert http_get(port, path)[0] == 200, f"{where}: {path} while running"


def assert_metrics(port: int, path: str, where: str) -> None:
    status, body = http_get(port, path)
    assert status == 200, f"{where}: {path}"
    assert "# TYPE shovel_records_read_total counter" in body, f"{where}: {path}"


def test_the_server_tells_the_endpoints_apart(served: tuple[Metrics, int]) -> None:
    """The assertions below can fail: each endpoint fails the others' checks."""
    metrics, port = served
    with pytest.raises(AssertionError):
        assert_liveness(port, "/readyz", metrics, "")
    with pytest.raises(AssertionError):
        assert_readiness(port, "/healthz", metrics, "")
    with pytest.raises(AssertionError):
        assert_metrics(port, "/healthz", "")
    assert http_get(port, "/metrics/")[0] == 404


@pytest.mark.parametrize("name", KUBERNETES_WORKLOADS)
def test_kubernetes_probes_and_scrape_annotations_match_the_server(
    name: str, served: tuple[Metrics, int], settings_of: SettingsOf
) -> None:
    metrics, port = served
    workload = kubernetes_workload(KUBERNETES_WORKLOADS[name])
    container = kubernetes_container(KUBERNETES_WORKLOADS[name])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    metrics_port = settings_of(deployment(name)).metrics_port

    def resolve(p: str | int) -> int:
        return ports[p] if isinstance(p, str) else p

    live, ready = container["livenessProbe"]["httpGet"], container["readinessProbe"]["httpGet"]
    assert resolve(live["port"]) == metrics_port
    assert resolve(ready["port"]) == metrics_port
    assert_liveness(port, live["path"], metrics, "livenessProbe")
    assert_readiness(port, ready["path"], metrics, "readinessProbe")

    service = kubernetes_service(KUBERNETES_WORKLOADS[name])
    assert service["spec"]["selector"].items() <= (
        workload["spec"]["template"]["metadata"]["labels"].items()
    )
    [service_port] = service["spec"]["ports"]
    assert resolve(service_port["targetPort"]) == metrics_port
    for where, meta in (
        ("Service", service["metadata"]),
        ("pod template", workload["spec"]["template"]["metadata"]),
    ):
        annotations = meta["annotations"]
        assert annotations["prometheus.io/scrape"] == "true", where
        assert int(annotations["prometheus.io/port"]) == metrics_port, where
        assert_metrics(port, annotations["prometheus.io/path"], where)


def test_the_dockerfile_healthcheck_probes_liveness(served: tuple[Metrics, int]) -> None:
    metrics, port = served
    argv = healthcheck_command()
    assert argv[0] == "python", argv
    command = [sys.executable, *argv[1:]]
    # The port the check falls back to when SHOVEL_METRICS_PORT is unset: the image's default.
    fallback = re.search(
        r"""environ\.get\(\s*['"]SHOVEL_METRICS_PORT['"]\s*,\s*['"](\d+)['"]\s*\)""", argv[-1]
    )
    assert fallback, argv
    assert int(fallback.group(1)) == default_metrics_port()

    def check(at: int) -> int:
        env = {"PATH": os.environ.get("PATH", ""), "SHOVEL_METRICS_PORT": str(at)}
        run = subprocess.run(command, env=env, capture_output=True, timeout=30, check=False)
        return run.returncode

    # Healthy while running and while draining (not ready).
    for ready in (False, True):
        metrics.ready = ready
        assert check(port) == 0, f"HEALTHCHECK fails with ready={ready}"
    # And it can fail: nothing listens there.
    assert check(free_port()) != 0


def test_prometheus_scrapes_the_compose_service_on_its_metrics_path(
    served: tuple[Metrics, int], settings_of: SettingsOf
) -> None:
    _, port = served
    job = shovel_scrape_job()
    assert_metrics(port, job.get("metrics_path", "/metrics"), "prometheus.yml")
    services = yaml_file(COMPOSE)["services"]
    [targets] = [c["targets"] for c in job["static_configs"]]
    for target in targets:
        host, _, target_port = target.rpartition(":")
        assert host in services, f"{target}: no such compose service"
        metrics_port = settings_of(compose_deployment(host, host)).metrics_port
        assert int(target_port) == metrics_port, target
    # Every shovel service is scraped.
    scraped = {target.rpartition(":")[0] for target in targets}
    assert set(COMPOSE_SERVICES.values()) <= scraped
    # The alerts select the job by the name prometheus.yml gives it.
    jobs = {j["job_name"] for j in yaml_file(PROMETHEUS)["scrape_configs"]}
    for rule in alert_rules():
        for used in re.findall(r'job\s*=\s*"([^"]*)"', rule["expr"]):
            assert used in jobs, f"{rule['alert']}: job {used!r} is not scraped"


# --- the sink: one writer, no volume of its own, a stream made for it --------------------------


@dataclass(frozen=True)
class SinkUrl:
    # (host, port) of each server the URL names.
    servers: frozenset[tuple[str, int]]
    stream: str
    subject: str


def host_port(text: str) -> tuple[str, int]:
    """HOST[:PORT] of a NATS URL, the port 4222 when none is given."""
    host, sep, port = text.rpartition("@")[2].partition(":")
    return host, int(port) if sep else NATS_CLIENT_PORT


def sink_url(url: str) -> SinkUrl:
    """nats://HOST[:PORT][,HOST...]/STREAM?subject=SUBJECT[&...] (or tls://)."""
    scheme, sep, rest = url.partition("://")
    assert sep, f"not a URL: {url!r}"
    assert scheme in {"nats", "tls"}, f"not a NATS sink: {url!r}"
    hosts, _, path = rest.partition("/")
    stream, _, query = path.partition("?")
    options = dict(parse_qsl(query, strict_parsing=True))
    assert stream, f"no stream: {url!r}"
    assert "subject" in options, f"no subject: {url!r}"
    return SinkUrl(frozenset(host_port(h) for h in hosts.split(",")), stream, options["subject"])


def subject_matches(pattern: str, subject: str) -> bool:
    """Whether a stream's subject `pattern` (with the wildcards * and >) takes `subject`."""
    want, have = pattern.split("."), subject.split(".")
    for i, token in enumerate(want):
        if token == ">":
            return len(have) > i
        if i >= len(have) or token not in {"*", have[i]}:
            return False
    return len(want) == len(have)


@dataclass(frozen=True)
class NatsCommand:
    """A `nats` CLI command line: its words, its --option=value pairs and its bare flags."""

    where: str
    words: tuple[str, ...]
    options: dict[str, str]
    flags: frozenset[str]

    def servers(self) -> frozenset[tuple[str, int]]:
        urls = self.options["--server"].split(",")
        return frozenset(host_port(u.partition("://")[2] or u) for u in urls)


# The options of the nats CLI that the deploy files give with a value (--NAME VALUE or
# --NAME=VALUE); any other option is a bare flag. Short names by their long ones.
NATS_VALUE_OPTIONS = frozenset({"--server", "--subjects", "--replicas", "--storage", "--config"})
NATS_SHORT_OPTIONS = {"-s": "--server"}
NATS_CLIENT_PORT = 4222


def nats_command(where: str, argv: list[str]) -> NatsCommand:
    assert argv[0] == "nats", argv
    words, options, flags = [], {}, set()
    tokens = iter(argv[1:])
    for token in tokens:
        name, eq, value = token.partition("=")
        name = NATS_SHORT_OPTIONS.get(name, name)
        if not token.startswith("-"):
            words.append(token)
        elif eq:
            options[name] = value
        elif name in NATS_VALUE_OPTIONS:
            options[name] = next(tokens)
        else:
            flags.add(name)
    return NatsCommand(where, tuple(words), options, frozenset(flags))


def shell_commands(script: str) -> list[list[str]]:
    """The simple commands of a shell script (`until A; do B; done`: A and B), as words."""
    lexer = shlex.shlex(script, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token in {";", "&&", "||", "|", "&"}:
            commands.append([])
        elif commands[-1] or token not in {"until", "while", "if", "then", "do", "else"}:
            commands[-1].append(token)
    return [c for c in commands if c and c not in (["done"], ["fi"])]


def compose_nats_commands() -> list[NatsCommand]:
    """The nats CLI commands the compose services run."""
    found = []
    for name, service in yaml_file(COMPOSE)["services"].items():
        command = service.get("command", [])
        if isinstance(command, str):
            scripts = [command]
        elif command[:2] in (["sh", "-c"], ["/bin/sh", "-c"]):
            scripts = [command[2]]
        else:
            scripts = [shlex.join(command)]
        found += [
            nats_command(name, words)
            for script in scripts
            for words in shell_commands(script)
            if words[0] == "nats"
        ]
    return found


def kubernetes_nats_commands() -> list[NatsCommand]:
    """The nats CLI commands the containers of the Kubernetes workloads run."""
    return [
        nats_command(workload["metadata"]["name"], argv)
        for workload in kubernetes_workloads()
        for container in workload["spec"]["template"]["spec"]["containers"]
        if (argv := [*container.get("command", []), *container.get("args", [])])[:1] == ["nats"]
    ]


def stream_creations(commands: list[NatsCommand]) -> dict[str, NatsCommand]:
    return {c.words[2]: c for c in commands if c.words[:2] == ("stream", "add")}


def compose_mounted_text(service: str, path: str) -> str:
    """The text of the file of deploy/ that the compose service sees at `path`."""
    for volume in compose_service(service).get("volumes", []):
        if isinstance(volume, dict):  # the long syntax
            source, target = str(volume.get("source", "")), str(volume["target"])
        else:  # SOURCE:TARGET[:MODE]
            source, target = str(volume).split(":")[:2]
        if target == path:
            assert source.startswith("."), f"{service}: {path} is not a file of deploy/"
            return (COMPOSE.parent / source).read_text()
    raise AssertionError(f"{service}: nothing is mounted at {path}")


def kubernetes_mounted_text(workload: str, path: str) -> str:
    """The text of the ConfigMap key that the workload's containers see at `path`."""
    spec = kubernetes_workload(workload)["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    file = PurePosixPath(path)
    for container in spec["containers"]:
        for mount in container.get("volumeMounts", []):
            if file.parent != PurePosixPath(mount["mountPath"]) or "subPath" in mount:
                continue
            source = volumes[mount["name"]].get("configMap")
            assert source, f"{workload}: {path} is not in a ConfigMap"
            assert "items" not in source, f"{workload}: the test reads keys by their own names"
            [config_map] = [
                d
                for d in kubernetes_docs()
                if d["kind"] == "ConfigMap" and d["metadata"]["name"] == source["name"]
            ]
            text = config_map["data"][file.name]
            assert isinstance(text, str)
            return text
    raise AssertionError(f"{workload}: nothing is mounted at {path}")


MountedText = Callable[[str, str], str]


def stream_config(command: NatsCommand, mounted: MountedText) -> dict[str, Any]:
    """The stream configuration that `nats stream add STREAM --config FILE` reads: the JSON of
    the JetStream API, from the file the command's container sees."""
    assert "--config" in command.options, f"{command.where}: the configuration is not in a file"
    # The file is the whole configuration: no stream option beside it.
    assert command.options.keys() == {"--server", "--config"}, command
    assert not command.flags, command
    config = json.loads(mounted(command.where, command.options["--config"]))
    assert isinstance(config, dict), command
    return config


def compose_nats_servers() -> dict[tuple[str, int], str]:
    """The compose services that run a NATS server: (host, client port) -> image."""
    return {
        (service.get("hostname", name), NATS_CLIENT_PORT): service["image"]
        for name, service in yaml_file(COMPOSE)["services"].items()
        if service.get("image", "").startswith("nats:")
    }


def kubernetes_nats_servers() -> dict[tuple[str, int], str]:
    """The pods of the NATS StatefulSets, by their names under the headless Service."""
    servers = {}
    for workload in kubernetes_workloads():
        if workload["kind"] != "StatefulSet":
            continue
        for container in workload["spec"]["template"]["spec"]["containers"]:
            if not container["image"].startswith("nats:"):
                continue
            [port] = [p["containerPort"] for p in container["ports"] if p["name"] == "client"]
            name, service = workload["metadata"]["name"], workload["spec"]["serviceName"]
            for i in range(workload["spec"]["replicas"]):
                servers[(f"{name}-{i}.{service}", int(port))] = container["image"]
    return servers


def test_the_sink_helpers_read_urls_subjects_and_commands() -> None:
    url = sink_url("nats://u:p@n1:4223,n2/S?subject=a.b&batch=10")
    assert url == SinkUrl(frozenset({("n1", 4223), ("n2", 4222)}), "S", "a.b")
    with pytest.raises(AssertionError, match="no subject"):
        sink_url("nats://n1/S?batch=10")
    with pytest.raises(AssertionError, match="not a NATS sink"):
        sink_url("http://n1/S?subject=a")
    assert subject_matches("records.>", "records.generated")
    assert subject_matches("records.*", "records.generated")
    assert not subject_matches("records.>", "records")
    assert not subject_matches("records.*", "records.a.b")
    assert not subject_matches("orders.>", "records.generated")
    [until, sleep] = shell_commands("until nats -s nats://n1 s add 'a.>' --x; do sleep 1; done")
    assert until == ["nats", "-s", "nats://n1", "s", "add", "a.>", "--x"]
    assert sleep == ["sleep", "1"]
    command = nats_command("here", ["nats", "-s", "nats://n1:1,n2", "stream", "add", "S", "--y"])
    assert command.words == ("stream", "add", "S")
    assert command.flags == {"--y"}
    assert command.servers() == {("n1", 1), ("n2", 4222)}
    with pytest.raises(AssertionError, match="not in a file"):
        stream_config(command, lambda where, path: "{}")
    command = nats_command("here", ["nats", "-s", "n1", "stream", "add", "S", "--config", "/c"])
    assert stream_config(command, lambda where, path: f'{{"name": "{where}{path}"}}') == {
        "name": "here/c"
    }
    with pytest.raises(AssertionError, match="nothing is mounted at /nowhere"):
        compose_mounted_text("sink-setup", "/nowhere")
    with pytest.raises(AssertionError, match="nothing is mounted at /nowhere"):
        kubernetes_mounted_text("nats-stream-records", "/nowhere/records.json")


@pytest.mark.parametrize("name", DEPLOYMENT_NAMES)
def test_only_the_sink_deployments_write_into_nats(name: str) -> None:
    assert ("SHOVEL_SINK" in deployment(name).env) == (name in SINK_DEPLOYMENTS), name


def sink_stream(name: str) -> tuple[SinkUrl, dict[str, Any]]:
    """The sink deployment `name`'s URL, and the configuration of the stream it names, as the
    same file makes it, on the NATS servers the file runs."""
    sink = sink_url(deployment(name).env["SHOVEL_SINK"])
    servers: dict[tuple[str, int], str]
    mounted: MountedText
    if name in COMPOSE_SERVICES:
        servers, commands, mounted = (
            compose_nats_servers(),
            compose_nats_commands(),
            compose_mounted_text,
        )
    else:
        servers, commands = kubernetes_nats_servers(), kubernetes_nats_commands()
        mounted = kubernetes_mounted_text
    assert sink.servers <= servers.keys(), f"{name}: {sink.servers - servers.keys()} run no NATS"
    created = stream_creations(commands)
    assert sink.stream in created, f"{name}: nothing creates the stream {sink.stream}"
    command = created[sink.stream]
    assert command.servers() <= servers.keys(), command
    if name in COMPOSE_SERVICES:  # shovel starts once the stream is there
        depends_on = compose_service(COMPOSE_SERVICES[name])["depends_on"]
        assert depends_on[command.where]["condition"] == "service_completed_successfully"
    config = stream_config(command, mounted)
    assert config.get("num_replicas", 1) <= len(servers), (
        f"{command.where}: more replicas than servers"
    )
    return sink, config


@pytest.mark.parametrize("name", SINK_DEPLOYMENTS)
def test_the_sink_writes_into_a_stream_made_for_atomic_batches(name: str) -> None:
    sink, config = sink_stream(name)
    # The nats CLI would create the stream its argument names, whatever the file says.
    assert config["name"] == sink.stream
    assert any(subject_matches(s, sink.subject) for s in config["subjects"]), config["subjects"]
    # Without allow_atomic shovel publishes one record per round trip (with a WARNING).
    assert config.get("allow_atomic") is True, f"{name}: no atomic batches"
    # The stream is the checkpoint too: it must outlive a server restart.
    assert config.get("storage", "file") == "file", config


def test_compose_and_kubernetes_make_the_same_stream() -> None:
    [compose, kubernetes] = [sink_stream(name)[1] for name in SINK_DEPLOYMENTS]
    assert compose == kubernetes


def test_the_nats_servers_take_atomic_batches() -> None:
    images = {*compose_nats_servers().values(), *kubernetes_nats_servers().values()}
    assert images, "no NATS server found"
    for image in images:
        version = re.match(r"nats:(\d+)\.(\d+)", image)
        assert version, f"{image}: no version in the tag"
        assert tuple(map(int, version.groups())) >= ATOMIC_BATCH_SERVER, image


@pytest.mark.parametrize("name", SINK_DEPLOYMENTS)
def test_the_sink_is_one_writer_with_no_volume_of_its_own(name: str) -> None:
    """A second writer on the subject is refused (Nats-Expected-Last-Subject-Sequence), and
    the records and the offset to resume from are in the stream."""
    if name in COMPOSE_SERVICES:
        service = compose_service(COMPOSE_SERVICES[name])
        assert service.get("scale", 1) == 1
        assert service.get("deploy", {}).get("replicas", 1) == 1
        assert "volumes" not in service, "the output directory holds no records"
    else:
        workload = kubernetes_workload(KUBERNETES_WORKLOADS[name])
        assert workload["kind"] == "Deployment"
        assert workload["spec"]["replicas"] == 1
        # A rolling update would start the new pod while the old one still writes.
        assert workload["spec"]["strategy"]["type"] == "Recreate"
        volumes = workload["spec"]["template"]["spec"].get("volumes", [])
        assert all(v.keys() == {"name", "emptyDir"} for v in volumes), volumes
    # No other shovel of the same file writes the same subject.
    group = COMPOSE_SERVICES if name in COMPOSE_SERVICES else KUBERNETES_WORKLOADS
    writers = [
        (sink.stream, sink.subject)
        for n in group
        if "SHOVEL_SINK" in deployment(n).env
        for sink in [sink_url(deployment(n).env["SHOVEL_SINK"])]
    ]
    assert len(writers) == len(set(writers)), writers


@pytest.mark.parametrize("name", KUBERNETES_WORKLOADS)
def test_the_output_directory_is_mounted(name: str, settings_of: SettingsOf) -> None:
    """The root filesystem is read-only: shovel writes only where a volume is mounted."""
    container = kubernetes_container(KUBERNETES_WORKLOADS[name])
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    output_dir = settings_of(deployment(name)).output_dir
    mounts = [Path(m["mountPath"]) for m in container["volumeMounts"]]
    assert any(output_dir.is_relative_to(m) for m in mounts), (output_dir, mounts)


def test_each_kubernetes_selector_picks_the_pods_of_one_workload() -> None:
    """No Service or controller takes another one's pods (a shovel label on the sink's pods
    would put them under the StatefulSet's selector and behind its Service)."""
    workloads = kubernetes_workloads()

    def picked(selector: dict[str, str]) -> list[str]:
        return [
            w["metadata"]["name"]
            for w in workloads
            if selector.items() <= w["spec"]["template"]["metadata"].get("labels", {}).items()
        ]

    for w in workloads:
        if "selector" in w["spec"]:
            name = w["metadata"]["name"]
            assert picked(w["spec"]["selector"]["matchLabels"]) == [name], name
    for service in (d for d in kubernetes_docs() if d["kind"] == "Service"):
        assert len(picked(service["spec"]["selector"])) == 1, service["metadata"]["name"]


# --- SHOVEL_* names ----------------------------------------------------------------------------


def deploy_files() -> list[Path]:
    """The Dockerfile and the configuration files under deploy/ (scripts and docs aside)."""
    files = [p for p in DEPLOY.rglob("*") if p.suffix in {".yaml", ".yml", ".json"}]
    return [DOCKERFILE, *sorted(files)]


def unknown_variables(text: str, known: set[str]) -> set[str]:
    """The SHOVEL_* names in `text` that are not in `known`."""
    return set(re.findall(r"\bSHOVEL_[A-Z0-9_]+\b", text)) - known


def test_every_shovel_variable_in_the_deploy_files_is_a_setting() -> None:
    settings = setting_env_names()
    # In the Dockerfile, names declared with ARG are build arguments (the service user's
    # UID and GID), not settings; anywhere else they would be a mistake.
    args = build_args()
    assert not args & settings, f"build arguments named like settings: {args & settings}"
    unknown: dict[str, set[str]] = {}
    for path in deploy_files():
        names = unknown_variables(
            path.read_text(), settings | args if path == DOCKERFILE else settings
        )
        if names:
            unknown[str(path.relative_to(ROOT))] = names
    assert unknown == {}, f"not settings of shovel.settings.Settings: {unknown}"


def test_the_variable_check_sees_the_files_and_a_wrong_name() -> None:
    settings = setting_env_names()
    assert {
        "SHOVEL_GRACE_PERIOD_S",
        "SHOVEL_SHUTDOWN_TIMEOUT_S",
        "SHOVEL_METRICS_PORT",
        "SHOVEL_SINK",
    } <= settings
    assert unknown_variables(
        "SHOVEL_SHUTDOWN_TIMEOUT_S=30 SHOVEL_SHUTDOWN_TIMEOUT=30 ${SHOVEL_UID}", settings
    ) == {"SHOVEL_SHUTDOWN_TIMEOUT", "SHOVEL_UID"}
    assert {DOCKERFILE, COMPOSE, KUBERNETES, KUBERNETES_SINK, PROMETHEUS, ALERTS, DASHBOARD} <= set(
        deploy_files()
    )


# --- metric names ------------------------------------------------------------------------------

PROMQL_WORDS = frozenset(
    {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right"}
    | {"bool", "offset", "inf", "nan"}
)


def promql_metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (Grafana's $variables allowed)."""
    text = re.sub(r""""(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'""", '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges and subqueries
    text = re.sub(
        r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text
    )  # label lists
    names = set()
    for m in re.finditer(r"(?<![\w.:$])[A-Za-z_:][\w:]*", text):
        if text[m.end() :].lstrip().startswith("("):  # a function or an aggregation
            continue
        if m.group().lower() not in PROMQL_WORDS:
            names.add(m.group())
    return names


def dashboard_metric_names() -> set[str]:
    """Every metric name the dashboard's panels and query variables select."""
    board = dashboard()
    names: set[str] = set()
    panels = list(board["panels"])
    while panels:
        panel = panels.pop()
        panels.extend(panel.get("panels", []))  # the panels of a row
        for target in panel.get("targets", []):
            names |= promql_metric_names(target["expr"])
    for variable in board["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable["query"]
        query = query["query"] if isinstance(query, dict) else query
        # label_values(METRIC, LABEL), or a PromQL query.
        m = re.fullmatch(r"\s*label_values\((.*),\s*\w+\s*\)\s*", query)
        names |= promql_metric_names(m.group(1) if m else query)
    return names


def alerts_metric_names() -> set[str]:
    return {n for r in alert_rules() for n in promql_metric_names(r["expr"])}


def test_metric_names_are_found_in_promql() -> None:
    quantile = 'histogram_quantile(0.99, sum by (instance, le) (rate(a_bucket{i=~"$i"}[5m])))'
    assert promql_metric_names(quantile) == {"a_bucket"}
    assert promql_metric_names("rate(b_total[$__rate_interval])") == {"b_total"}
    assert promql_metric_names(
        "rate(a_total[5m]) > 0 and on (instance, job) changes(b[5m]) == 0"
    ) == {"a_total", "b"}
    assert promql_metric_names('up{job="x"} == 0 or c offset 5m > 1e3') == {"up", "c"}
    assert promql_metric_names("d * 1000") == {"d"}


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> frozenset[str]:
    """Every sample name a real `python -m shovel` exports on /metrics.

    Read from its second run on a followed file (a file source adds the shovel_source_*
    metrics), so that the scraped run has a previous stop to report.
    """
    tmp = tmp_path_factory.mktemp("exported")
    src, out = tmp / "in.ndjson", tmp / "out"
    write_input(src, 100)
    text = ""
    for run in (1, 2):
        if run == 2:  # something new to read, so that the run reports the file it reads
            with src.open("ab") as f:
                f.write(b"appended for the second run\n")
        size = src.stat().st_size
        port = free_port()
        s = Shovel(
            ["--source", src, "--follow", "--follow-poll-ms", "20", "--output-dir", out,
             "--metrics-host", "127.0.0.1", "--metrics-port", str(port)],
            tmp / f"{run}.log",
        )  # fmt: skip

        def caught_up(s: Shovel = s, port: int = port, size: int = size) -> bool:
            nonlocal text
            assert s.proc.poll() is None, s.stderr
            try:
                status, text = http_get(port, "/metrics")
            except OSError:  # not listening yet
                return False
            return status == 200 and metric(text, "shovel_committed_offset") == size

        try:
            wait_until(caught_up, what=f"run {run} to commit the whole file")
        finally:
            s.signal(signal.SIGTERM)
            assert s.wait() == 0, s.stderr
    return frozenset(
        sample.name for family in text_string_to_metric_families(text) for sample in family.samples
    )


def test_the_scrape_holds_what_the_code_exports(exported: frozenset[str]) -> None:
    assert {
        "shovel_records_read_total",
        "shovel_committed_offset",
        "shovel_storage_write_duration_seconds_bucket",
        "shovel_source_lag_bytes",
    } <= exported
    assert exported >= LAST_STOP_METRICS


@pytest.mark.parametrize(
    ("what", "used"), [("dashboard", dashboard_metric_names), ("alerts", alerts_metric_names)]
)
def test_every_queried_metric_is_exported(
    what: str, used: Callable[[], set[str]], exported: frozenset[str]
) -> None:
    names = used()
    unknown = names - exported - PROMETHEUS_TARGET_METRICS
    assert unknown == set(), f"{what}: metrics shovel does not export: {unknown}"
    # A stop is judged from the report the next run exports, not from gauges set at exit.
    assert not names & PRE_EXIT_METRICS, f"the {what} uses {names & PRE_EXIT_METRICS}"


def test_the_dashboard_and_alerts_read_the_last_stop_report() -> None:
    assert dashboard_metric_names() >= LAST_STOP_METRICS
    assert alerts_metric_names() >= LAST_STOP_METRICS - {"shovel_last_stop_end_timestamp_seconds"}
    # The dashboard parses, and the check sees its ordinary queries too, its variable's
    # label_values(shovel_records_read_total, instance) included, and no label or datasource.
    assert {"shovel_records_read_total", "shovel_shutdown_in_progress"} <= dashboard_metric_names()
    assert not {"instance", "prometheus"} & dashboard_metric_names()
    assert {"up", "shovel_storage_errors_total"} <= alerts_metric_names()
