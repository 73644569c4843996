"""The container and Kubernetes recipes stay true to the code: every command they run is a real `videoscore`
command with real options, the compose file has the services and guarantees the README promises, and KEDA
scales on the metric the worker and the exporter actually publish.

There is no Docker engine (and no compose plugin) where this suite runs: files are parsed and checked here;
`docker compose config` runs too where the plugin exists.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from videoscore.cli import app
from videoscore.core.fleet import QUEUE_LOAD_METRIC, QueueLoadCollector
from videoscore.core.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
K8S = ROOT / "deploy" / "k8s"
COMPOSE_ENV = {"POSTGRES_PASSWORD": "x", "MINIO_ROOT_PASSWORD": "y", "FLOWER_BASIC_AUTH": "ops:z"}


def _cli_accepts(argv: list[str]) -> None:
    """`videoscore <argv> --help` parses: the command exists and takes these options."""
    result = CliRunner().invoke(app, [*argv, "--help"])
    assert result.exit_code == 0, f"videoscore {' '.join(argv)}: {result.output}"


def _dockerfile_instruction(path: Path, name: str) -> list[str]:
    lines = [line for line in path.read_text().splitlines() if line.startswith(f"{name} ")]
    return json.loads(lines[-1][len(name) + 1:])  # the last one wins, in exec (JSON) form


def _compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def _k8s(name: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all((K8S / name).read_text()) if doc]


@pytest.mark.parametrize("dockerfile", ["worker.Dockerfile", "producer.Dockerfile"])
def test_each_image_runs_a_real_videoscore_command(dockerfile: str) -> None:
    path = DOCKER / dockerfile
    assert _dockerfile_instruction(path, "ENTRYPOINT") == ["videoscore"]
    _cli_accepts(_dockerfile_instruction(path, "CMD"))
    for line in path.read_text().splitlines():  # every COPY source exists in the repository
        if line.startswith("COPY ") and "--from" not in line:
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), f"{dockerfile}: COPY {source}"
    assert "HF_HOME=/models" in (DOCKER / "worker.Dockerfile").read_text()


def test_compose_has_the_stack_and_its_guarantees() -> None:
    services = _compose()["services"]
    assert {"redis", "postgres", "minio", "worker", "api", "exporter", "flower", "prometheus"} <= set(services)
    assert services["redis"]["command"][services["redis"]["command"].index("--appendonly") + 1] == "yes"
    [gpu] = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"]
    assert services["worker"]["environment"]["HF_HOME"] == "/models"
    assert any(v.startswith("models:/models") for v in services["worker"]["volumes"])
    assert "stop_grace_period" in services["worker"]
    for name, service in services.items():  # our images run real commands with real options
        if service.get("image", "").startswith("videoscore-"):
            _cli_accepts(service["command"])
        for build in [service.get("build")] if service.get("build") else []:
            assert (DOCKER / build["context"] / build["dockerfile"]).is_file(), name
    assert services["api"]["command"][0] == "api"
    env = services["worker"]["environment"]
    assert env["VIDEOSCORE_BROKER_URL"].startswith("redis://redis:")
    assert "postgres:5432" in env["VIDEOSCORE_DATABASE_URL"]
    unknown = [k for k in env if k.startswith("VIDEOSCORE_") and k[11:].lower() not in Settings.model_fields]
    assert unknown == []


def test_flower_asks_for_a_password_from_the_environment_and_the_worker_sends_it_events() -> None:
    services = _compose()["services"]
    [auth] = [arg for arg in services["flower"]["command"] if arg.startswith("--basic-auth=")]
    assert auth.startswith("--basic-auth=${FLOWER_BASIC_AUTH:?"), "required, like POSTGRES_PASSWORD: no default"
    assert "FLOWER_BASIC_AUTH" in (DOCKER / "compose.yaml").read_text().splitlines()[1]  # the header says to set it
    assert "--events" in services["worker"]["command"]
    _cli_accepts(services["worker"]["command"])


def test_prometheus_scrapes_the_ports_the_worker_and_exporter_serve() -> None:
    config = yaml.safe_load((DOCKER / "prometheus.yml").read_text())
    targets = {t for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}
    assert f"worker:{Settings().metrics_port}" in targets
    exporter_port = _compose()["services"]["exporter"]["command"][-1]
    assert f"exporter:{exporter_port}" in targets
    assert (DOCKER / "prometheus.yml").name in str(_compose()["services"]["prometheus"]["volumes"])


@pytest.mark.skipif(not shutil.which("docker"), reason="no docker CLI")
def test_docker_compose_config_accepts_the_file_where_the_plugin_exists() -> None:
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("the docker CLI has no compose plugin here; structure is checked by the tests above")
    result = subprocess.run(["docker", "compose", "-f", str(DOCKER / "compose.yaml"), "config", "-q"],
                            capture_output=True, text=True, env={**os.environ, **COMPOSE_ENV})
    assert result.returncode == 0, result.stderr


def test_keda_scales_the_worker_deployment_from_zero_on_the_metric_the_fleet_exports(tmp_path: Path) -> None:
    [scaled] = _k8s("keda-scaledobject.yaml")
    [worker] = _k8s("worker-deployment.yaml")
    assert scaled["kind"] == "ScaledObject" and scaled["spec"]["scaleTargetRef"]["name"] == worker["metadata"]["name"]
    assert scaled["spec"]["minReplicaCount"] == 0
    [trigger] = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    assert re.search(rf"\b{QUEUE_LOAD_METRIC}\{{", trigger["metadata"]["query"])
    # ... and that is the name the collector (served by every worker and by the exporter) really emits
    from videoscore.db.migrate import upgrade
    from videoscore.db.session import Database

    url = f"sqlite:///{tmp_path / 'v.db'}"
    upgrade(url)
    names = {family.name for family in QueueLoadCollector(Database(url)).collect()}
    assert QUEUE_LOAD_METRIC in names


def test_worker_pods_get_a_gpu_time_to_drain_and_the_metrics_port() -> None:
    [worker] = _k8s("worker-deployment.yaml")
    pod = worker["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["terminationGracePeriodSeconds"] > Settings().job_timeout_s  # a warm shutdown can finish a job
    assert {p["containerPort"] for p in container["ports"]} == {Settings().metrics_port}
    _cli_accepts(container["args"])
    exporter, service = _k8s("exporter-deployment.yaml")
    [exporter_container] = exporter["spec"]["template"]["spec"]["containers"]
    _cli_accepts(exporter_container["args"])
    assert service["spec"]["ports"][0]["port"] == int(exporter_container["args"][-1])
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert all((K8S / name).is_file() for name in kustomization["resources"])
    assert set(kustomization["resources"]) == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}


def test_metrics_bind_loopback_unless_a_container_recipe_opens_them_to_its_scraper() -> None:
    from videoscore.core.fleet import start_queue_load_server
    from videoscore.db.session import Database
    from videoscore.worker.service import metrics
    from videoscore.worker.testing.servers import free_port

    assert Settings().metrics_host == "127.0.0.1"
    worker_server = metrics.serve(free_port())
    assert worker_server is not None and worker_server.server_address[0] == "127.0.0.1"
    worker_server.shutdown()
    worker_server.server_close()
    exporter_server = start_queue_load_server(Database("sqlite://"), free_port())
    assert exporter_server.server_address[0] == "127.0.0.1"
    exporter_server.shutdown()
    exporter_server.server_close()
    # every recipe that serves metrics to a scraper in another container or pod says so explicitly
    assert "VIDEOSCORE_METRICS_HOST=0.0.0.0" in (DOCKER / "worker.Dockerfile").read_text()
    assert "VIDEOSCORE_METRICS_HOST=0.0.0.0" in (DOCKER / "producer.Dockerfile").read_text()
    services = _compose()["services"]
    for name in ("worker", "exporter"):
        assert services[name]["environment"]["VIDEOSCORE_METRICS_HOST"] == "0.0.0.0", name
    for manifest in ("worker-deployment.yaml", "exporter-deployment.yaml"):
        [container] = _k8s(manifest)[0]["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e["value"] for e in container.get("env", [])}
        assert env.get("VIDEOSCORE_METRICS_HOST") == "0.0.0.0", manifest


def _dockerignored(path: str, patterns: list[str]) -> bool:
    """Whether the build context leaves `path` out (Docker's rules: a pattern excludes a path or any folder
    above it; `**` spans folders; a later `!pattern` re-includes)."""
    from fnmatch import fnmatchcase

    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        tail = pattern.removeprefix("**/")
        hit = any(fnmatchcase(c, pattern) or (pattern.startswith("**/") and (
            fnmatchcase(c, tail) or fnmatchcase(c.rsplit("/", 1)[-1], tail))) for c in candidates)
        if hit:
            ignored = not negate
    return ignored


def test_the_build_context_sends_what_the_images_copy_and_leaves_out_venvs_git_and_tests() -> None:
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    for dockerfile in ("worker.Dockerfile", "producer.Dockerfile"):
        for line in (DOCKER / dockerfile).read_text().splitlines():
            if line.startswith("COPY ") and "--from" not in line:
                for source in line.split()[1:-1]:
                    assert not _dockerignored(source, patterns), f"{dockerfile}: COPY {source} is .dockerignored"
    for left_out in (".venv", ".venv-reference/bin/python", ".git/HEAD", "tests/unit/test_deploy.py",
                     "reference", "bench", "docs", "var", "core/__pycache__/fleet.cpython-311.pyc", ".mypy_cache"):
        assert _dockerignored(left_out, patterns), left_out
    assert not _dockerignored("core/fleet.py", patterns)


def test_each_image_and_the_compose_services_check_their_own_health() -> None:
    for dockerfile, target in (("producer.Dockerfile", ":8000/healthz"),
                               ("worker.Dockerfile", "/metrics")):
        text = (DOCKER / dockerfile).read_text()
        assert "HEALTHCHECK " in text and target in text, dockerfile
    services = _compose()["services"]
    expected = {"api": ":8000/healthz", "exporter": f":{services['exporter']['command'][-1]}/metrics",
                "worker": f":{services['worker']['environment']['VIDEOSCORE_METRICS_PORT']}/metrics"}
    for name, target in expected.items():
        test = services[name]["healthcheck"]["test"]
        assert test[:2] == ["CMD", "python"] and target in test[-1], name


def _containers(manifest: str) -> list[tuple[dict, dict]]:
    return [(doc["spec"]["template"]["spec"], c) for doc in _k8s(manifest) if doc["kind"] == "Deployment"
            for c in doc["spec"]["template"]["spec"]["containers"]]


@pytest.mark.parametrize("manifest", ["api-deployment.yaml", "worker-deployment.yaml", "exporter-deployment.yaml"])
def test_every_deployment_is_probed_bounded_and_locked_down(manifest: str) -> None:
    [(pod, container)] = _containers(manifest)
    _cli_accepts(container["args"])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["port"] in ports, f"{manifest}: {probe}"
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert "memory" in container["resources"]["limits"]
    security = container["securityContext"]
    assert security["runAsNonRoot"] and security["readOnlyRootFilesystem"]
    assert security["allowPrivilegeEscalation"] is False and security["capabilities"]["drop"] == ["ALL"]
    # a read-only root: every place the process writes is a volume
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    assert set(mounts.values()) <= set(volumes)


def test_the_api_deployment_serves_health_and_readiness_through_a_service() -> None:
    deployment, service = _k8s("api-deployment.yaml")
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    port = container["args"][container["args"].index("--port") + 1]
    assert {p["containerPort"] for p in container["ports"]} == {int(port)}
    assert service["kind"] == "Service"
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert service["spec"]["ports"][0]["targetPort"] in {p["name"] for p in container["ports"]}
    assert "api-deployment.yaml" in yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]


def test_the_manifests_validate_against_the_kubernetes_schemas() -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    checked = 0
    for path in sorted(K8S.glob("*.yaml")):
        for doc in _k8s(path.name):
            if doc.get("apiVersion", "").startswith(("keda.sh/", "kustomize.config.k8s.io/")):
                continue  # CRDs and kustomize's own file: no upstream schema
            kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)
            checked += 1
    assert checked >= 7
