"""The Kubernetes manifests in deploy/: each one is a valid object of its kind (the API schemas that
``kubernetes-validate`` ships, offline, strict: no unknown fields), and the parts of the design
that would break silently hold: the servers' probes use the gRPC health check on the serving port,
the headless Service finds exactly the server pods, both pools read the PostgreSQL URL from the
Secret, the servers train nothing, and the command lines parse. No cluster runs here."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml  # type: ignore[import-untyped]  # no types-PyYAML in the dev extras

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
# The oldest version the manifests target (gRPC probes are GA from 1.27; 1.30 is the oldest schema
# set worth keeping) and the newest one the package ships.
VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
EXAMPLES = {"secrets.example.yaml"}  # placeholders: never applied by `kubectl apply -k`
# `textinv worker` is being written (issue 14); its flags are fixed here until it exists, and the
# integrator switches this to the real parser, as the server's already is (serve_flags_namespace).
VARIABLE = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")

Doc = dict[str, Any]


def load(name: str) -> list[Doc]:
    return [doc for doc in yaml.safe_load_all((DEPLOY / name).read_text()) if doc is not None]


def manifests() -> list[tuple[str, Doc]]:
    files = sorted(path.name for path in DEPLOY.glob("*.yaml") if path.name != "kustomization.yaml")
    return [(name, doc) for name in files for doc in load(name)]


def named(doc: Doc, kind: str, name: str) -> bool:
    return bool(doc["kind"] == kind and doc["metadata"]["name"] == name)


def find(kind: str, name: str) -> Doc:
    matches = [doc for _, doc in manifests() if named(doc, kind, name)]
    assert len(matches) == 1, f"expected one {kind} {name!r}, found {len(matches)}"
    return matches[0]


def pod_spec(deployment: str) -> Doc:
    spec: Doc = find("Deployment", deployment)["spec"]["template"]["spec"]
    return spec


def container(deployment: str) -> Doc:
    containers = pod_spec(deployment)["containers"]
    assert len(containers) == 1
    return dict(containers[0])


def expanded_args(spec: Doc) -> list[str]:
    """The container's args as Kubernetes passes them: ``$(NAME)`` replaced by the container's env
    variable NAME. An undefined NAME stays literal in Kubernetes, so here it fails the test."""
    defined = {item["name"] for item in spec.get("env", [])}

    def substitute(match: re.Match[str]) -> str:
        assert match.group(1) in defined, f"$({match.group(1)}) is not in the container's env"
        return f"value-of-{match.group(1)}"

    return [VARIABLE.sub(substitute, str(arg)) for arg in spec["args"]]


def serve_flags_namespace(argv: list[str]) -> argparse.Namespace:
    """``argv`` parsed by the real ``textinv serve`` parser; an unknown flag exits (a failure)."""
    from textinv_server.serve_command import add_serve_subcommand

    parser = argparse.ArgumentParser(prog="textinv")
    add_serve_subcommand(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def mounts(spec: Doc) -> dict[str, Doc]:
    return {mount["mountPath"]: mount for mount in spec["volumeMounts"]}


def volumes(deployment: str) -> dict[str, Doc]:
    return {volume["name"]: volume for volume in pod_spec(deployment)["volumes"]}


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(
    ("name", "doc"),
    manifests(),
    ids=[f"{name}:{doc['kind']}/{doc['metadata']['name']}" for name, doc in manifests()],
)
def test_every_manifest_matches_the_api_schema(name: str, doc: Doc, version: str) -> None:
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as error:  # the message alone; the schema is huge
        pytest.fail(f"{name}: {'/'.join(map(str, error.path))}: {error.message}")


def test_the_kustomization_lists_every_manifest_but_the_examples() -> None:
    (kustomization,) = load("kustomization.yaml")
    listed = kustomization["resources"]
    expected = {name for name, _ in manifests()} - EXAMPLES
    assert sorted(listed) == sorted(expected)


def test_the_servers_probes_are_grpc_health_checks_on_the_serving_port() -> None:
    server = container("textinv-server")
    (grpc_port,) = [port["containerPort"] for port in server["ports"] if port["name"] == "grpc"]
    args = serve_flags_namespace(expanded_args(server))
    assert grpc_port == args.port == 50051
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert server[probe]["grpc"] == {"port": grpc_port}, probe
    startup = server["startupProbe"]
    # Loading and warming up SD 1.5 takes minutes (the Dockerfile's HEALTHCHECK allows 300 s).
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300


def test_the_headless_service_selects_the_server_pods_and_only_them() -> None:
    service = find("Service", "textinv")["spec"]
    assert service["clusterIP"] == "None"
    server = find("Deployment", "textinv-server")["spec"]
    assert selects(service["selector"], server["template"]["metadata"]["labels"])
    assert service["selector"] == server["selector"]["matchLabels"]
    worker_labels = find("Deployment", "textinv-worker")["spec"]["template"]["metadata"]["labels"]
    assert not selects(service["selector"], worker_labels), "workers serve no gRPC port"
    (port,) = service["ports"]
    names = {item["name"]: item["containerPort"] for item in container("textinv-server")["ports"]}
    assert port["port"] == names[port["targetPort"]] == 50051


def test_the_metrics_service_and_the_budget_select_the_server_pods() -> None:
    labels = find("Deployment", "textinv-server")["spec"]["template"]["metadata"]["labels"]
    metrics = find("Service", "textinv-metrics")["spec"]
    names = {item["name"]: item["containerPort"] for item in container("textinv-server")["ports"]}
    assert selects(metrics["selector"], labels)
    assert [names[port["targetPort"]] for port in metrics["ports"]] == [9090]
    budget = find("PodDisruptionBudget", "textinv-server")["spec"]
    assert selects(budget["selector"]["matchLabels"], labels)


@pytest.mark.parametrize("deployment", ["textinv-server", "textinv-worker"])
def test_both_pools_read_the_store_url_from_the_secret(deployment: str) -> None:
    spec = container(deployment)
    (store,) = [item for item in spec["env"] if item["name"] == "TEXTINV_STORE"]
    assert store["valueFrom"]["secretKeyRef"] == {"name": "textinv-store", "key": "url"}
    args = [str(arg) for arg in spec["args"]]
    # The commands read $TEXTINV_STORE themselves; a --store flag would put the password in the
    # node's process list.
    assert not any(arg.startswith("--store") or "TEXTINV_STORE" in arg for arg in args)
    secret = find("Secret", "textinv-store")
    assert secret["stringData"]["url"].startswith("postgresql://")
    assert "PLACEHOLDER" in secret["stringData"]["url"], "the example holds no real password"


def test_the_server_command_line_parses_and_runs_no_workers() -> None:
    server = container("textinv-server")
    assert server["command"] == ["textinv"], "args replace the image's CMD, command its ENTRYPOINT"
    args = serve_flags_namespace(expanded_args(server))
    assert args.command == "serve" and "--no-workers" in server["args"] and args.workers is False
    assert (args.host, args.metrics_port, args.store) == ("0.0.0.0", 9090, None)  # from the env
    # The drain (--grace, then the store's close) ends before Kubernetes sends SIGKILL.
    grace_period = pod_spec("textinv-server")["terminationGracePeriodSeconds"]
    assert grace_period > args.grace_seconds + 10
    paths = mounts(server)
    assert str(args.keys_file.parent) in paths and str(args.model).startswith("/models/")
    keys = volumes("textinv-server")[paths[str(args.keys_file.parent)]["name"]]["secret"]
    assert keys["secretName"] == "textinv-keys"
    assert {"key": "keys.json", "path": args.keys_file.name} in keys["items"]


def test_the_worker_command_line_uses_known_flags_and_asks_for_a_gpu() -> None:
    worker = container("textinv-worker")
    argv = expanded_args(worker)
    assert worker["command"] == ["textinv"] and argv[0] == "worker"
    from textinv_server.worker_command import add_worker_subcommand

    parser = argparse.ArgumentParser(prog="textinv")
    add_worker_subcommand(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)  # an unknown flag exits here
    assert (args.data, args.store) == (Path("/data"), None)  # the store from $TEXTINV_STORE
    resources = worker["resources"]
    assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"] == "1"


def test_the_example_key_file_is_one_the_server_loads(tmp_path: Path) -> None:
    from textinv_server.keys import load_key_file

    path = tmp_path / "keys.json"
    path.write_text(find("Secret", "textinv-keys")["stringData"]["keys.json"])
    entries = load_key_file(path)
    assert {entry.role for entry in entries} == {"manage", "generate"}


@pytest.mark.parametrize("deployment", ["textinv-server", "textinv-worker"])
def test_pods_run_as_the_images_user_on_a_read_only_root(deployment: str) -> None:
    user = re.search(r"useradd [^\n]*--uid (\d+)", (REPO / "Dockerfile").read_text())
    assert user is not None, "the Dockerfile creates its user with useradd --uid"
    security = pod_spec(deployment)["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] == int(user[1])
    spec = container(deployment)
    assert spec["securityContext"]["readOnlyRootFilesystem"] is True
    paths, by_name = mounts(spec), volumes(deployment)
    for writable in ("/data", "/tmp"):
        assert "emptyDir" in by_name[paths[writable]["name"]], writable
    models = paths["/models"]
    assert models["readOnly"] is True
    claim = by_name[models["name"]]["persistentVolumeClaim"]["claimName"]
    assert find("PersistentVolumeClaim", claim)["spec"]["accessModes"] == ["ReadOnlyMany"]
    args = expanded_args(spec)
    assert args[args.index("--model") + 1].startswith("/models/")
    assert args[args.index("--data") + 1] == "/data"
