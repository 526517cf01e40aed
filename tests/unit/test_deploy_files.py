"""The files under deploy/ are consistent with the code they deploy.

Every YAML file parses; the sample config validates; every command a container, compose
service or systemd unit runs is a real ``cdcsync`` command with real options; every
``CDCSYNC_SECTION__KEY`` override names a config key that exists, and each container's
environment is enough to load the mounted config; the probes hit the admin API's port;
the alert rules use the metrics cdcsync exposes.
"""

from __future__ import annotations

import configparser
import json
import re
import shlex
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from pydantic import BaseModel

from cdc.capture.runtime import Capture
from cdc.cli import cli
from cdc.config import AdminConfig, Config, load_config
from cdc.ops.metrics import RuntimeCollector
from cdc.ops.reconcile.schedule import ReconcileScheduler
from cdc.sync.runtime import Sync

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
SAMPLE = DEPLOY / "cdcsync.yaml"
MOUNTED = "/etc/cdcsync/cdcsync.yaml"
METRICS = {
    "cdcsync_replication_lag_bytes",
    "cdcsync_replication_lag_seconds",
    "cdcsync_dead_lettered_total",
    "cdcsync_circuit_state",
    "cdcsync_slot_retained_wal_bytes",
    "cdcsync_reconcile_drift_rows",
}


def documents(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def k8s_objects() -> list[dict[str, Any]]:
    return [doc for path in sorted((DEPLOY / "k8s").glob("*.yaml")) for doc in documents(path)]


def deployments() -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in k8s_objects() if o["kind"] == "Deployment"}


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return dict(only)


def assert_real_command(args: list[str]) -> click.Command:
    """``cdcsync ARGS`` resolves to a command and its options parse (nothing runs)."""
    command: click.Command = cli
    rest = list(args)
    ctx = click.Context(cli, info_name="cdcsync")
    while isinstance(command, click.Group):
        assert rest, f"cdcsync {shlex.join(args)}: a subcommand is missing"
        name = rest.pop(0)
        sub = command.get_command(ctx, name)
        assert sub is not None, f"cdcsync has no command {name!r} ({shlex.join(args)})"
        command = sub
    command.make_context(command.name or "", rest)  # raises on an unknown option
    return command


def config_key_exists(variable: str) -> bool:
    """Whether ``CDCSYNC_A__B__C`` overrides a key the ``Config`` model has."""
    segments = variable.removeprefix("CDCSYNC_").split("__")
    return has_key(Config, [s.lower() if s.isupper() else s for s in segments])


def has_key(annotation: Any, path: list[str]) -> bool:
    """Whether ``path`` leads somewhere in a model field's type (unions: any member)."""
    if not path:
        return True
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return has_key(args[0], path)
    if origin in (typing.Union, types.UnionType):
        return any(has_key(a, path) for a in args)
    if origin is dict:
        return args[1] is Any or has_key(args[1], path[1:])  # a name, then its value
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        fields = {f.alias or n: f for n, f in annotation.model_fields.items()}
        key = path[0]
        field = fields.get(key) or fields.get(key.removesuffix("_env"))
        return field is not None and has_key(field.annotation, path[1:])
    return False


def env_of(entries: list[dict[str, Any]]) -> dict[str, str]:
    """A container's environment; values from Secrets become placeholders."""
    return {e["name"]: str(e.get("value", f"secret-{e['name'].lower()}")) for e in entries}


def secret_env_names(config: Mapping[str, Any]) -> set[str]:
    """The environment variables named by ``*_env`` keys anywhere in a config document."""
    found: set[str] = set()

    def walk(value: Any) -> None:
        if isinstance(value, Mapping):
            for key, item in value.items():
                if isinstance(key, str) and key.endswith("_env") and isinstance(item, str):
                    found.add(item)
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(config)
    return found


def check_environment(env: Mapping[str, str], *, where: str) -> Config:
    """Every CDCSYNC_*__* is a real key, every other variable feeds a ``*_env``, and loads."""
    wanted = secret_env_names(yaml.safe_load(SAMPLE.read_text()))
    for name in env:
        if "__" in name and name.startswith("CDCSYNC_"):
            assert config_key_exists(name), f"{where}: {name} names no config key"
        elif name not in {"REGISTRY_STORAGE"}:
            assert name in wanted, f"{where}: {name} is neither an override nor a *_env secret"
    return load_config(SAMPLE, env=env)


# --------------------------------------------------------------------------- files


@pytest.mark.parametrize(
    "path", sorted(DEPLOY.rglob("*.yaml")), ids=lambda p: str(p.relative_to(DEPLOY))
)
def test_every_yaml_file_parses(path: Path) -> None:
    assert documents(path), f"{path} is empty"


def test_the_sample_config_validates_with_its_secrets_in_the_environment() -> None:
    data = yaml.safe_load(SAMPLE.read_text())
    env = {name: f"postgresql://u:p@db/{name.lower()}" for name in secret_env_names(data)}
    config = load_config(SAMPLE, env=env)
    assert config.source.tables == ["public.customers", "public.orders"]
    assert "analytics" in config.integrations


def test_the_full_example_config_validates() -> None:
    example = DEPLOY / "cdcsync.example.yaml"
    env = dict.fromkeys(
        secret_env_names(yaml.safe_load(example.read_text())), "postgresql://u:p@db/x"
    )
    load_config(example, env=env)


def test_the_configmap_holds_the_sample_config() -> None:
    (configmap,) = [o for o in k8s_objects() if o["kind"] == "ConfigMap"]
    assert yaml.safe_load(configmap["data"]["cdcsync.yaml"]) == yaml.safe_load(SAMPLE.read_text())


def test_the_override_check_refuses_keys_that_do_not_exist() -> None:
    assert config_key_exists("CDCSYNC_SOURCE__SLOT")
    assert config_key_exists("CDCSYNC_ADMIN__LISTEN")
    assert config_key_exists("CDCSYNC_KAFKA__PROPERTIES__LINGER_MS")
    assert config_key_exists("CDCSYNC_INTEGRATIONS__CRM__PAUSED")
    assert not config_key_exists("CDCSYNC_SOURCE__SLOTS")
    assert not config_key_exists("CDCSYNC_ADMIN__PORT")
    assert not config_key_exists("CDCSYNC_INTEGRATIONS__CRM__PAUSE")


# --------------------------------------------------------------------------- image


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
        for line in lines
        if line and not line.startswith("#")
    ]


def test_the_image_is_multi_stage_and_runs_as_a_non_root_user() -> None:
    instructions = dockerfile_instructions()
    assert sum(1 for op, _ in instructions if op == "FROM") >= 2
    users = [arg for op, arg in instructions if op == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}
    assert any(op == "COPY" and arg.startswith("--from=build") for op, arg in instructions)


def test_the_image_entrypoint_is_the_cdcsync_command_with_a_real_default() -> None:
    instructions = dict(dockerfile_instructions())
    entrypoint = json.loads(instructions["ENTRYPOINT"])
    command = json.loads(instructions["CMD"])
    assert entrypoint == ["cdcsync"]
    pyproject = (DEPLOY.parent / "pyproject.toml").read_text()
    assert re.search(r'^cdcsync = "cdc\.cli:main"$', pyproject, re.MULTILINE)
    assert assert_real_command(command).name == "run"
    assert command[command.index("--config") + 1] == MOUNTED


# --------------------------------------------------------------------------- compose


def compose() -> dict[str, Any]:
    (doc,) = documents(DEPLOY / "compose.yaml")
    return dict(doc)


def test_compose_runs_postgres_with_logical_wal_and_kafka_in_kraft_mode() -> None:
    services = compose()["services"]
    assert "wal_level=logical" in services["postgres"]["command"]
    kafka = services["kafka"]["environment"]
    assert "controller" in kafka["KAFKA_PROCESS_ROLES"]
    assert "zookeeper" not in json.dumps(services).lower()


def test_compose_services_run_real_commands_with_config_keys_that_exist() -> None:
    services = compose()["services"]
    assert assert_real_command(services["registry"]["command"]).name == "serve"
    app = services["cdcsync"]
    assert assert_real_command(app["command"]).name == "run"
    assert f"./cdcsync.yaml:{MOUNTED}:ro" in app["volumes"]
    env = {k: re.sub(r"\$\{[A-Z_]+:-(.*)\}", r"\1", str(v)) for k, v in app["environment"].items()}
    config = check_environment(env, where="compose cdcsync")
    assert config.registry.url == "http://registry:8081"
    assert config.kafka.bootstrap_servers == "kafka:9092"
    published = {p.split(":")[-1] for p in app["ports"]}
    assert str(config.admin.port) in published


# --------------------------------------------------------------------------- kubernetes


def test_capture_is_a_single_replica_recreated_on_update() -> None:
    capture = deployments()["cdcsync-capture"]
    assert capture["spec"]["replicas"] == 1
    assert capture["spec"]["strategy"]["type"] == "Recreate"
    assert assert_real_command(container(capture)["args"]).name == "capture"


def test_sync_workers_scale_horizontally() -> None:
    sync = deployments()["cdcsync-sync"]
    assert sync["spec"]["replicas"] > 1
    assert sync["spec"]["strategy"]["type"] == "RollingUpdate"
    assert assert_real_command(container(sync)["args"]).name == "sync"


@pytest.mark.parametrize("name", ["cdcsync-capture", "cdcsync-sync"])
def test_probes_hit_health_and_ready_on_the_admin_port(name: str) -> None:
    c = container(deployments()[name])
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    default_port = AdminConfig().port
    assert ports["admin"] == default_port
    assert c["livenessProbe"]["httpGet"] == {"path": "/health", "port": "admin"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "admin"}
    config = check_environment(env_of(c["env"]), where=name)
    assert config.admin.port == default_port
    assert config.admin.host == "0.0.0.0"  # reachable by the kubelet


def test_manifests_reference_the_configmap_and_secret_keys_they_define() -> None:
    objects = k8s_objects()
    (secret,) = [o for o in objects if o["kind"] == "Secret"]
    configmaps = {o["metadata"]["name"] for o in objects if o["kind"] == "ConfigMap"}
    for name, deployment in deployments().items():
        c = container(deployment)
        for entry in c.get("env", []):
            ref = entry.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                assert ref["name"] == secret["metadata"]["name"], name
                assert ref["key"] in secret["stringData"], f"{name}: {ref['key']}"
        for volume in deployment["spec"]["template"]["spec"].get("volumes", []):
            if "configMap" in volume:
                assert volume["configMap"]["name"] in configmaps
        assert assert_real_command([a.replace("$(", "").replace(")", "") for a in c["args"]])
    (kustomization,) = documents(DEPLOY / "k8s" / "kustomization.yaml")
    listed = set(kustomization["resources"])
    on_disk = {p.name for p in (DEPLOY / "k8s").glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk


# --------------------------------------------------------------------------- systemd


def test_the_systemd_unit_runs_real_commands() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(DEPLOY / "systemd" / "cdcsync.service")
    service = unit["Service"]
    assert service["User"] != "root"
    for key, expected in (("ExecStartPre", "check"), ("ExecStart", "run")):
        binary, *args = shlex.split(service[key])
        assert binary.endswith("/cdcsync")
        assert assert_real_command(args).name == expected
    assert unit["Install"]["WantedBy"] == "multi-user.target"


# --------------------------------------------------------------------------- alerts


def exposed_metrics() -> set[str]:
    """The metric names /metrics serves for the sample config (counters with _total)."""
    data = yaml.safe_load(SAMPLE.read_text())
    env = {name: f"postgresql://u:p@db/{name.lower()}" for name in secret_env_names(data)}
    config = load_config(SAMPLE, env=env)
    capture = Capture(config)
    capture.stats.heartbeat_lag_ms = 1.0
    capture.stats.retained_wal_bytes = 0
    sync = Sync(config)
    collector = RuntimeCollector(
        capture=capture, sync=sync, reconcile=ReconcileScheduler(config, sync.names)
    )
    return {
        family.name + ("_total" if family.type == "counter" else "")
        for family in collector.collect()
    }


def test_the_alerted_metrics_are_served() -> None:
    assert exposed_metrics() >= METRICS


def test_alert_rules_use_the_metrics_cdcsync_exposes() -> None:
    (doc,) = documents(DEPLOY / "prometheus" / "alerts.yaml")
    rules = [rule for group in doc["groups"] for rule in group["rules"]]
    used: set[str] = set()
    for rule in rules:
        assert rule["alert"] and rule["expr"], rule
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"]
        names = set(re.findall(r"\bcdcsync_[a-z_]+\b", str(rule["expr"])))
        assert names, f"{rule['alert']} uses no cdcsync metric"
        assert names <= METRICS, f"{rule['alert']}: unknown metric {names - METRICS}"
        used |= names
        if "integration" in str(rule["annotations"]):
            assert names & {
                "cdcsync_dead_lettered_total",
                "cdcsync_circuit_state",
                "cdcsync_reconcile_drift_rows",
            }
    assert used == METRICS
    circuit_open = [r for r in rules if "cdcsync_circuit_state == 2" in r["expr"]]
    assert circuit_open, "no alert on an open circuit (state 2)"
