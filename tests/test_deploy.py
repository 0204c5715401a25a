"""The shipped ops assets: Prometheus rules, the Grafana dashboard, Docker and Compose files.

Prometheus and Grafana only ever see metric names, so every freshd name the rules and the
dashboard use is checked against what daemon/metrics.py really registers: a renamed metric
breaks a test here, not an alert in production.  promtool (``apt-get install prometheus``)
checks and unit-tests the rules when it is installed; the tests that need it skip otherwise.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from freshd import metrics

REPO = Path(__file__).resolve().parent.parent
RULES = REPO / "deploy" / "prometheus" / "freshd-rules.yml"
RULES_TEST = REPO / "deploy" / "prometheus" / "freshd-rules.test.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "freshd.json"

# Names a rule may use before freshd exports them: such a rule is empty, so it never fires.
# When the metric lands, the test below says so: take it off this list.
NOT_YET_EXPORTED: set[str] = set()

NAME = re.compile(r"\b((?:freshd|process)_[a-zA-Z0-9_]+)\b")
needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool not installed (apt-get install -y --no-install-recommends prometheus)",
)


def exported_names() -> set[str]:
    """Every series name freshd's registry can produce (per-connection gauges included)."""
    metrics.set_connection_snapshot(lambda: [], per_connection=True)
    try:
        families = list(metrics.REGISTRY.collect())
    finally:
        metrics.set_connection_snapshot(None)
    names: set[str] = set()
    for family in families:
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"),
                    "summary": ("_count", "_sum", ""), "info": ("_info",)}.get(family.type, ("",))
        names.update(family.name + suffix for suffix in suffixes)
        names.update(sample.name for sample in family.samples)
    return names


def names_in(expr: str) -> set[str]:
    return set(NAME.findall(expr))


def test_exported_names_cover_the_documented_metrics() -> None:
    names = exported_names()
    assert {"freshd_connections", "freshd_sync_jobs_total", "freshd_provider_request_duration_seconds_bucket",
            "freshd_jobs_queued", "freshd_connection_state", "process_resident_memory_bytes"} <= names
    assert not any(name.endswith("_created") for name in names)


# -- Prometheus rules -------------------------------------------------------------------------------------


def rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return [rule for group in document["groups"] for rule in group["rules"]]


def test_rules_cover_the_promised_alerts() -> None:
    alerts = {rule["alert"]: rule for rule in rules()}
    assert {"FreshdDown", "FreshdAbsent", "FreshdStoreDown", "FreshdConnectionsNeedReauth",
            "FreshdCircuitOpenTooLong", "FreshdDataStale", "FreshdActorRestarting",
            "FreshdEventRelayLagging"} <= set(alerts)
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name


def test_rules_use_only_metric_names_freshd_exports() -> None:
    exported = exported_names()
    used = set().union(*(names_in(rule["expr"]) for rule in rules()))
    assert used, "no freshd_* name found: the name pattern is broken"
    assert used - NOT_YET_EXPORTED <= exported, sorted(used - NOT_YET_EXPORTED - exported)
    assert used >= NOT_YET_EXPORTED
    assert not NOT_YET_EXPORTED & exported, "exported now: remove it from NOT_YET_EXPORTED"


@needs_promtool
def test_rules_pass_promtool_check() -> None:
    result = subprocess.run(["promtool", "check", "rules", str(RULES)], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_rules_pass_their_promtool_unit_tests() -> None:
    result = subprocess.run(["promtool", "test", "rules", RULES_TEST.name], cwd=RULES_TEST.parent,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0 and "SUCCESS" in result.stdout, result.stdout + result.stderr


# -- the Grafana dashboard --------------------------------------------------------------------------------


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return loaded


def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in items:
        yield panel
        yield from panels(panel.get("panels", []))


def queries() -> list[str]:
    return [target["expr"] for panel in panels(dashboard()["panels"]) for target in panel.get("targets", [])]


def test_dashboard_is_importable_grafana_json() -> None:
    board = dashboard()
    assert isinstance(board["schemaVersion"], int) and board["schemaVersion"] >= 36
    assert board["uid"] == "freshd" and board["title"]
    assert [(i["name"], i["type"], i["pluginId"]) for i in board["__inputs"]] == [
        ("DS_PROMETHEUS", "datasource", "prometheus")]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"  # resolves the uid when provisioned
    ids = [panel["id"] for panel in panels(board["panels"])]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels(board["panels"]):
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"]), panel["title"]
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"], panel["title"]
            assert target["refId"] and target["expr"], panel["title"]


def test_dashboard_queries_use_only_exported_metric_names() -> None:
    exported = exported_names()
    for expr in queries():
        used = names_in(expr)
        assert used, f"no freshd metric in {expr!r}"
        assert used <= exported, (expr, sorted(used - exported))


def test_dashboard_shows_the_promised_topics() -> None:
    used = set().union(*(names_in(expr) for expr in queries()))
    assert {
        "freshd_connections",  # connections by state
        "freshd_sync_jobs_total",  # syncs and outcomes
        "freshd_records_synced_total",  # records/s
        "freshd_oldest_successful_sync_age_seconds", "freshd_connections_stale",  # freshness
        "freshd_provider_request_duration_seconds_bucket", "freshd_provider_requests_total",  # latency, errors
        "freshd_rate_limit_wait_seconds_total",  # rate-limit waits
        "freshd_circuits_open",  # breaker states
        "freshd_jobs_queued",  # job queue
    } <= used


@needs_promtool
def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """promtool parses each query as a recording rule (Grafana's variables given plain values)."""
    substitutions = {"$__rate_interval": "5m", "$instance": ".*", "$job": ".*"}
    records = []
    for i, query in enumerate(queries()):
        expr = query
        for variable, value in substitutions.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, expr
        records.append({"record": f"dashboard:query_{i}", "expr": expr})
    path = tmp_path / "queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": records}]}))
    result = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


# -- Docker and Compose (docker is not run here: checked statically) -------------------------------------

COMPOSE = REPO / "compose.yaml"
DOCKERFILE = REPO / "Dockerfile"


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    return loaded


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text(encoding="utf-8"))
    out = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            instruction, _, rest = line.strip().partition(" ")
            out.append((instruction.upper(), rest.strip()))
    return out


def bind_mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    mounts = []
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            mounts.append((source, target))
    return mounts


def test_compose_has_the_stack_and_its_mounts_exist() -> None:
    document = compose()
    services = document["services"]
    assert {"postgres", "valkey", "freshd", "prometheus", "grafana"} <= set(services)
    for name, service in services.items():
        for source, _ in bind_mounts(service):
            assert not source.startswith("/"), f"{name}: host paths outside the repo: {source}"
            assert (REPO / source).exists(), f"{name} mounts {source}, which is not in the repository"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith("."):
                assert source in document["volumes"], f"{name}: named volume {source} is not declared"
    assert (REPO / services["freshd"]["build"] / "Dockerfile").exists()


def test_compose_wires_freshd_to_postgres_and_prometheus_grafana_to_the_shipped_files() -> None:
    services = compose()["services"]
    freshd = services["freshd"]
    assert freshd["environment"]["FRESHD_DATABASE_URL"].startswith("postgresql://")
    assert "@postgres:5432/" in freshd["environment"]["FRESHD_DATABASE_URL"]
    assert freshd["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert any(target == "/var/lib/freshd" for target in (v.split(":")[1] for v in freshd["volumes"]))

    prometheus = dict(bind_mounts(services["prometheus"]))
    assert prometheus["./deploy/prometheus/freshd-rules.yml"] == "/etc/prometheus/freshd-rules.yml"
    config_target = prometheus["./deploy/prometheus/prometheus.yml"]
    assert f"--config.file={config_target}" in services["prometheus"]["command"]
    config = yaml.safe_load((REPO / "deploy" / "prometheus" / "prometheus.yml").read_text(encoding="utf-8"))
    rule_files = [str(Path(config_target).parent / path) for path in config["rule_files"]]
    assert rule_files == ["/etc/prometheus/freshd-rules.yml"]  # what the container really has
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "freshd"  # the rules' up{job="freshd"}
    assert job["static_configs"][0]["targets"] == ["freshd:9464"]

    grafana = dict(bind_mounts(services["grafana"]))
    assert grafana["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    provider = yaml.safe_load((REPO / "deploy/grafana/provisioning/dashboards/freshd.yml").read_text())
    dashboards_dir = provider["providers"][0]["options"]["path"]
    assert Path(grafana["./deploy/grafana/freshd.json"]).parent == Path(dashboards_dir)
    sources = yaml.safe_load((REPO / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
    (source,) = sources["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090" and source["isDefault"]


@needs_promtool
def test_compose_prometheus_config_passes_promtool() -> None:
    result = subprocess.run(["promtool", "check", "config", str(REPO / "deploy" / "prometheus" / "prometheus.yml")],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_runs_as_non_root_with_a_healthcheck_and_an_external_database() -> None:
    instructions = dockerfile()
    final = instructions[max(i for i, (op, _) in enumerate(instructions) if op == "FROM"):]
    users = [args for op, args in final if op == "USER"]
    assert users, "the final stage must set USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), user
    (healthcheck,) = [args for op, args in final if op == "HEALTHCHECK"]
    assert "/healthz" in healthcheck and "CMD" in healthcheck
    env = " ".join(args for op, args in final if op == "ENV")
    assert "FRESHD_METRICS_ADDRESS=0.0.0.0:9464" in env  # reachable from outside the container
    assert "FRESHD_DATABASE_URL" not in env  # given at run time: no credentials baked in
    assert ("EXPOSE", "9464") in final
    assert "freshd" in next(args for op, args in final if op == "ENTRYPOINT")
    ignored = {line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    for op, args in instructions:
        if op == "COPY" and not args.startswith("--from"):
            for source in args.split()[:-1]:
                assert (REPO / source).exists(), f"COPY {source}: not in the repository"
                assert source not in ignored, f"COPY {source}: excluded by .dockerignore"
    install = " ".join(args for op, args in instructions if op == "RUN")
    assert "-c constraints.txt" in install and "[embedded]" not in install
