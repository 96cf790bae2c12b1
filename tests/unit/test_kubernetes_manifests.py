"""deploy/kubernetes renders (`kubectl kustomize`, or the files themselves read with
PyYAML where kubectl is missing) into what the code really serves and reads: the probes
hit the paths and the port the exporter serves, every CACHEWORK_* variable is a setting
cachework/settings.py reads and the whole environment loads, the commands are real ones,
terminationGracePeriodSeconds covers the shutdown the environment asks for, and no
credential is written in the files."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import click
import pytest
import yaml

import cachework.settings
from cachework.settings import load_settings
from cachework.worker.probes import LIVE_PATH, READY_PATH, READY_TIMEOUT

ROOT = Path(__file__).resolve().parents[2]
FOLDER = ROOT / "deploy" / "kubernetes"
# Seconds a cold shutdown takes once the running tasks are done or cancelled (the pool,
# the broker connection, the exporter): what terminationGracePeriodSeconds adds.
SHUTDOWN_MARGIN = 30
# The variables that are not cachework settings, and why they are there.
OTHER_VARIABLES = {"REMAP_SIGTERM": "billiard: SIGTERM is Celery's cold (and soft) shutdown"}
# Variables that carry credentials (in their URL): only from a Secret.
SECRET_VARIABLES = {
    "CACHEWORK_DATABASE_URL",
    "CACHEWORK_BROKER_URL",
    "CACHEWORK_RESULT_BACKEND",
    "CACHEWORK_REDIS_URL",
}
# Stand-ins for the Secret's values, to load the settings a pod would have.
SECRET_STANDINS = {
    "CACHEWORK_DATABASE_URL": "postgresql+psycopg://cachework@db:5432/app",
    "CACHEWORK_BROKER_URL": "redis://redis:6379/0",
    "CACHEWORK_RESULT_BACKEND": "redis://redis:6379/1",
    "CACHEWORK_REDIS_URL": "redis://redis:6379/0",
}


def render() -> list[dict]:
    """The manifests as the cluster would get them."""
    kubectl = shutil.which("kubectl")
    if kubectl:
        text = subprocess.run(
            [kubectl, "kustomize", str(FOLDER)],
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout
        return [doc for doc in yaml.safe_load_all(text) if doc]
    kustomization = yaml.safe_load((FOLDER / "kustomization.yaml").read_text())
    return [
        doc
        for name in kustomization["resources"]
        for doc in yaml.safe_load_all((FOLDER / name).read_text())
        if doc
    ]


@pytest.fixture(scope="module")
def docs() -> list[dict]:
    return render()


def deployment(docs: list[dict], component: str) -> dict:
    found = [
        d
        for d in docs
        if d["kind"] == "Deployment"
        and d["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/component")
        == component
    ]
    assert len(found) == 1, [d["metadata"]["name"] for d in docs]
    return found[0]


def container(doc: dict) -> dict:
    containers = doc["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def literal_env(c: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in c["env"] if "value" in e}


def pod_env(c: dict) -> dict[str, str]:
    """The environment a pod gets, with stand-ins for the Secret's values."""
    env = literal_env(c)
    for e in c["env"]:
        if "valueFrom" in e:
            env[e["name"]] = SECRET_STANDINS[e["name"]]
    return env


def test_kinds(docs):
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in docs)
    assert kinds == [
        ("Deployment", "cachework-beat"),
        ("Deployment", "cachework-worker"),
        ("PodDisruptionBudget", "cachework-worker"),
    ]
    if shutil.which("kubectl"):  # the image override applied by kustomize
        for doc in docs:
            if doc["kind"] == "Deployment":
                assert container(doc)["image"] == "registry.example.com/your-app/cachework:0.1.0"


def test_commands_are_real(docs):
    from cachework.worker.cli import main

    worker = container(deployment(docs, "cachework-worker"))
    assert worker["command"][0] == "cachework"
    name = worker["command"][1]
    assert main.get_command(click.Context(main), name) is not None, name
    assert name == "worker"
    beat = container(deployment(docs, "cachework-beat"))
    # `celery -A cachework.worker beat`: the package gives Celery its app (worker/__init__).
    assert beat["command"] == ["celery", "-A", "cachework.worker", "beat"]
    import worker as package

    assert "app" in package.__all__


def test_probes_hit_what_the_exporter_serves(docs):
    worker = container(deployment(docs, "cachework-worker"))
    ports = {p["name"]: p["containerPort"] for p in worker["ports"]}
    settings = load_settings(pod_env(worker))
    assert ports == {"metrics": settings.metrics_port}
    # The kubelet probes from outside the pod: not a loopback address.
    assert settings.metrics_bind in ("0.0.0.0", "::")
    probes = {kind: worker[kind] for kind in ("startupProbe", "livenessProbe", "readinessProbe")}
    for kind, probe in probes.items():
        assert probe["httpGet"]["port"] in ("metrics", settings.metrics_port), kind
    assert probes["livenessProbe"]["httpGet"]["path"] == LIVE_PATH
    assert probes["startupProbe"]["httpGet"]["path"] == LIVE_PATH
    assert probes["readinessProbe"]["httpGet"]["path"] == READY_PATH
    # /ready answers within READY_TIMEOUT; the kubelet must wait longer than that.
    assert probes["readinessProbe"]["timeoutSeconds"] > READY_TIMEOUT
    assert probes["livenessProbe"]["timeoutSeconds"] >= 1
    # Prometheus finds the same port.
    annotations = deployment(docs, "cachework-worker")["spec"]["template"]["metadata"][
        "annotations"
    ]
    assert annotations["prometheus.io/port"] == str(settings.metrics_port)
    assert annotations["prometheus.io/path"] == "/metrics"


@pytest.mark.parametrize("component", ["cachework-worker", "cachework-beat"])
def test_every_variable_is_a_real_setting_and_loads(docs, component):
    c = container(deployment(docs, component))
    source = Path(cachework.settings.__file__).read_text()
    for entry in c["env"]:
        name = entry["name"]
        if name.startswith("CACHEWORK_"):
            assert f'"{name}"' in source, f"{name} is not read by cachework/settings.py"
        else:
            assert name in OTHER_VARIABLES, name
    load_settings(pod_env(c))  # no ConfigError: every value is one the settings accept


@pytest.mark.parametrize("component", ["cachework-worker", "cachework-beat"])
def test_credentials_only_from_a_secret(docs, component):
    c = container(deployment(docs, component))
    by_name = {e["name"]: e for e in c["env"]}
    for name in SECRET_VARIABLES:
        assert "value" not in by_name[name], name
        assert by_name[name]["valueFrom"]["secretKeyRef"]["name"] == "cachework"
    for name, value in literal_env(c).items():
        assert "://" not in value, (name, value)
        assert not re.search(r"pass|secret|token", name, re.I), name


def test_no_credentials_in_the_files():
    """Not in a comment either: a URL with a user part, or a password."""
    for path in sorted(FOLDER.iterdir()):
        text = path.read_text()
        assert not re.search(r"://[^\s/@]*:[^\s/@]*@", text), path
        assert not re.search(r"password\s*[:=]", text, re.I), path


def test_grace_period_covers_the_shutdown(docs):
    doc = deployment(docs, "cachework-worker")
    c = container(doc)
    env = literal_env(c)
    settings = load_settings(pod_env(c))
    grace = doc["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    if env.get("REMAP_SIGTERM") == "SIGQUIT":
        # SIGTERM = cold shutdown: tasks get the soft shutdown, then go back to the queue.
        assert settings.soft_shutdown_timeout > 0, "a cold shutdown without soft shutdown"
        needed = min(settings.soft_shutdown_timeout, settings.task_time_limit)
    else:
        # SIGTERM = warm shutdown: tasks run to their end, at most the hard time limit.
        needed = settings.task_time_limit
    assert grace >= needed + SHUTDOWN_MARGIN, (grace, needed)


def test_beat_and_the_disruption_budget(docs):
    beat = deployment(docs, "cachework-beat")
    assert beat["spec"]["replicas"] == 1
    assert beat["spec"]["strategy"]["type"] == "Recreate"
    worker = deployment(docs, "cachework-worker")
    (pdb,) = [d for d in docs if d["kind"] == "PodDisruptionBudget"]
    labels = worker["spec"]["template"]["metadata"]["labels"]
    selector = pdb["spec"]["selector"]["matchLabels"]
    assert selector.items() <= labels.items()
    assert worker["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["maxUnavailable"] == 1
    assert worker["spec"]["replicas"] > pdb["spec"]["maxUnavailable"]


def test_the_fallback_reads_the_same_documents(docs):
    """Without kubectl the test reads the files; they must be the same objects (but for
    the labels and image kustomize adds)."""
    kustomization = yaml.safe_load((FOLDER / "kustomization.yaml").read_text())
    raw = [
        doc
        for name in kustomization["resources"]
        for doc in yaml.safe_load_all((FOLDER / name).read_text())
        if doc
    ]
    assert sorted((d["kind"], d["metadata"]["name"]) for d in raw) == sorted(
        (d["kind"], d["metadata"]["name"]) for d in docs
    )
