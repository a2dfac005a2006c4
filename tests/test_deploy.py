"""The deployment files, tested as far as a machine without a container engine
can: the Dockerfile's ENTRYPOINT and HEALTHCHECK run in the venv against a
real FerretDB; the compose file and the Kubernetes manifests parse, agree
with each other and set only variables Loom has; ``make run`` builds only
what running needs."""

from __future__ import annotations

import json
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from pydantic import AliasChoices

from service.config import Settings
from tests.conftest import MODEL_DIR
from tests.scripted_llm import ScriptedLLM
from tests.support.ferretdb import FerretDB, free_port
from tests.support.process import REPO, clean_env

DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"


def settings_variables() -> set[str]:
    """Every environment variable ``Settings`` reads."""
    names: set[str] = set()
    for name, info in Settings.model_fields.items():
        alias = info.validation_alias
        if isinstance(alias, AliasChoices):
            names |= {choice for choice in alias.choices if isinstance(choice, str)}
        else:
            names.add(f"LOOM_{name.upper()}")
    return names


@dataclass
class Dockerfile:
    """The instructions of the repository's Dockerfile that the tests read."""

    stages: int = 0
    env: dict[str, str] = field(default_factory=dict)
    user: str = ""
    entrypoint: list[str] = field(default_factory=list)
    healthcheck: list[str] = field(default_factory=list)


def read_dockerfile() -> Dockerfile:
    """Parse ``Dockerfile`` (continuation lines joined; ENV, USER, ENTRYPOINT
    and HEALTHCHECK of the last stage kept)."""
    lines: list[str] = []
    current = ""
    for raw in (REPO / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if line.startswith("#") or not (line or current):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        lines.append(current + line)
        current = ""
    parsed = Dockerfile()
    for line in lines:
        word, _, rest = line.partition(" ")
        match word.upper():
            case "FROM":
                parsed.stages += 1
                parsed.env, parsed.user = {}, ""
            case "ENV":
                parsed.env.update(item.split("=", 1) for item in shlex.split(rest))
            case "USER":
                parsed.user = rest.strip()
            case "ENTRYPOINT":
                parsed.entrypoint = json.loads(rest)
            case "HEALTHCHECK":
                parsed.healthcheck = json.loads(rest.split(" CMD ", 1)[1])
    return parsed


def k8s_documents() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(K8S.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def k8s(kind: str, name: str = "loom") -> dict[str, Any]:
    [doc] = [d for d in k8s_documents() if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return loaded


def loom_services() -> dict[str, dict[str, Any]]:
    return {n: s for n, s in compose()["services"].items() if s.get("image", "").startswith("loom")}


# --------------------------------------------------------------------- the image


def _in_venv(command: list[str]) -> list[str]:
    """A command of the image with its ``python`` as this venv's."""
    assert command[0] == "python"
    return [sys.executable, *command[1:]]


def test_the_image_is_multi_stage_and_runs_as_a_user() -> None:
    image = read_dockerfile()
    assert image.stages >= 2
    assert image.user
    assert image.user.split(":")[0] not in {"root", "0"}
    assert image.entrypoint == ["python", "-m", "service"]
    assert image.healthcheck == ["python", "-m", "service", "health"]
    loom = {k for k in image.env if k.startswith("LOOM_")}
    assert loom
    assert loom <= settings_variables()


def test_the_images_entrypoint_and_healthcheck_work_in_the_venv(
    ferretdb: FerretDB, llm: ScriptedLLM, tmp_path: Path
) -> None:
    image = read_dockerfile()
    port = free_port()
    values = {k: v for k, v in image.env.items() if k.startswith(("LOOM_", "ORT_", "PYTHON"))}
    values |= {  # the image's paths and wildcard address, made to fit this machine
        "LOOM_LISTEN": f"0.0.0.0:{port}",  # health must still find it on loopback
        "LOOM_DATA_DIR": str(tmp_path / "data"),
        "LOOM_EMBEDDING_MODEL_DIR": str(MODEL_DIR),
        "LOOM_MONGODB_URI": ferretdb.uri,
        "LOOM_MONGODB_DB": "loom_deploy",
        "LOOM_LLM_BASE_URL": llm.base_url,
        # The image leaves TLS or plaintext to the deployment, as compose and
        # the manifests do (plaintext behind a mesh).
        "LOOM_ALLOW_PLAINTEXT": "true",
    }
    env = clean_env(**values)

    def health() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            _in_venv(image.healthcheck),
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    down = health()
    assert down.returncode == 1
    assert f"health check of 127.0.0.1:{port} failed: UNAVAILABLE" in down.stderr

    with open(tmp_path / "loom.log", "wb") as log:
        server = subprocess.Popen(
            _in_venv(image.entrypoint), cwd=tmp_path, env=env, stdout=log, stderr=log
        )
    try:
        deadline = time.monotonic() + 60
        while (up := health()).returncode != 0:
            assert server.poll() is None, (tmp_path / "loom.log").read_text()
            assert time.monotonic() < deadline, up.stderr
            time.sleep(0.2)
        assert up.stdout.strip() == "SERVING"
        server.send_signal(signal.SIGTERM)
        assert server.wait(30) == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


# --------------------------------------------------------------------- compose


def test_compose_runs_two_replicas_on_a_replica_set_chroma_and_a_collector() -> None:
    services = compose()["services"]
    replicas = loom_services()
    assert len(replicas) >= 2
    assert "--replSet" in services["mongo"]["command"]
    replica_set = services["mongo"]["command"][services["mongo"]["command"].index("--replSet") + 1]
    for name, replica in replicas.items():
        env = replica["environment"]
        assert replica["build"]["dockerfile"] == "Dockerfile"
        assert (DEPLOY / replica["build"]["context"] / "Dockerfile").is_file()
        mongo = urlsplit(env["LOOM_MONGODB_URI"])
        assert mongo.hostname in services
        assert f"replicaSet={replica_set}" in mongo.query, name
        assert urlsplit(env["LOOM_CHROMA_URL"]).hostname == "chroma"
        assert urlsplit(env["OTEL_EXPORTER_OTLP_ENDPOINT"]).hostname in services
        listen_port = env["LOOM_LISTEN"].rsplit(":", 1)[1]
        assert all(p.endswith(f":{listen_port}") for p in replica["ports"])
        grace = float(replica["stop_grace_period"].rstrip("s"))
        assert grace > float(env["LOOM_SHUTDOWN_GRACE"])
        assert set(replica["depends_on"]) >= {"mongo", "chroma", "otel-collector"}
    collector = yaml.safe_load((DEPLOY / "otel-collector.yaml").read_text())
    exporter = collector["exporters"]["otlp/jaeger"]["endpoint"]
    assert exporter.split(":")[0] in services
    assert collector["service"]["pipelines"]["traces"]["exporters"] == ["otlp/jaeger"]


def test_compose_sets_only_variables_loom_has() -> None:
    names = {n for s in loom_services().values() for n in s["environment"] if n.startswith("LOOM_")}
    assert "LOOM_MONGODB_URI" in names
    assert names <= settings_variables(), names - settings_variables()


# --------------------------------------------------------------------- kubernetes


def test_the_manifests_parse_and_kustomize_lists_them_all() -> None:
    kinds = {d["kind"] for d in k8s_documents()}
    expected = {
        "ConfigMap",
        "Secret",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
    }
    assert expected <= kinds
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    assert listed == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}


def test_the_deployment_probes_grpc_health_on_the_port_loom_listens_on() -> None:
    deployment = k8s("Deployment")
    pod = deployment["spec"]["template"]
    [container] = pod["spec"]["containers"]
    [port] = container["ports"]
    config = k8s("ConfigMap")["data"]
    assert config["LOOM_LISTEN"].endswith(f":{port['containerPort']}")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == port["containerPort"], probe
    assert pod["spec"]["terminationGracePeriodSeconds"] > float(config["LOOM_SHUTDOWN_GRACE"])
    security = pod["spec"]["securityContext"]
    assert security["runAsNonRoot"] is True
    assert str(security["runAsUser"]) == read_dockerfile().user.split(":")[0]
    sources = {next(iter(ref.values()))["name"] for ref in container["envFrom"]}
    assert sources == {k8s("ConfigMap")["metadata"]["name"], k8s("Secret")["metadata"]["name"]}

    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    services = [d for d in k8s_documents() if d["kind"] == "Service"]
    assert {s["metadata"]["name"] for s in services} == {"loom", "loom-headless"}
    for service in services:
        assert service["spec"]["selector"].items() <= labels.items()
        assert service["spec"]["ports"][0]["targetPort"] == port["name"]
    assert k8s("PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() <= labels.items()
    hpa = k8s("HorizontalPodAutoscaler")["spec"]
    assert hpa["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert 2 <= hpa["minReplicas"] < hpa["maxReplicas"]


def test_the_manifests_set_only_variables_loom_has() -> None:
    [container] = k8s("Deployment")["spec"]["template"]["spec"]["containers"]
    names = (
        set(k8s("ConfigMap")["data"])
        | set(k8s("Secret")["stringData"])
        | {e["name"] for e in container.get("env", [])}
    )
    loom = {n for n in names if n.startswith("LOOM_")}
    assert {"LOOM_LISTEN", "LOOM_MONGODB_URI", "LOOM_LLM_API_KEY"} <= loom
    assert loom <= settings_variables(), loom - settings_variables()
    assert "LOOM_MONGODB_URI" in k8s("Secret")["stringData"]  # credentials stay in the Secret


# --------------------------------------------------------------------- make run


@pytest.mark.parametrize(("target", "builds_test_tools"), [("run", False), ("setup", True)])
def test_make_run_builds_only_what_running_needs(target: str, builds_test_tools: bool) -> None:
    missing = {"GRPCURL": "/nonexistent/grpcurl", "JAEGER": "/nonexistent/jaeger-all-in-one"}
    done = subprocess.run(
        ["make", "-n", target, *(f"{k}={v}" for k, v in missing.items())],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    planned = [path for path in missing.values() if path in done.stdout]
    assert bool(planned) is builds_test_tools, done.stdout
