"""The cluster and deployment files against the schemas their consumers apply, strictly, and the
settings that keep a cluster working and closed: token authentication everywhere, workers that
exist, images and IAM that fit."""

from __future__ import annotations

import json
import os
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
KUBERAY = ROOT.parent / "shared" / "schemas" / "kuberay-v1.7.0"


def load(name: str) -> dict:
    return yaml.safe_load((ROOT / name).read_text())


# --- the Ray cluster launcher -------------------------------------------------------------------


def ray_schema() -> dict:
    import ray

    return json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())


def test_cluster_yaml_validates_against_the_launchers_schema():
    errors = [
        f"{list(e.absolute_path)}: {e.message}"
        for e in jsonschema.Draft7Validator(ray_schema()).iter_errors(load("cluster.yaml"))
    ]
    assert errors == []
    bad = {**load("cluster.yaml"), "head_start_commands": []}  # a misspelt key is refused
    assert list(jsonschema.Draft7Validator(ray_schema()).iter_errors(bad))


def test_cluster_yaml_starts_every_node_with_token_auth():
    cfg = load("cluster.yaml")
    starts = [
        c for c in cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"] if "ray start" in c
    ]
    assert len(starts) == 2 and all("RAY_AUTH_MODE=token" in c for c in starts), starts
    # One token, generated once on the machine that runs `ray up`, copied to every node.
    mounts = cfg["file_mounts"]
    assert mounts.get("~/.ray/auth_token") == "~/.ray/auth_token"
    text = (ROOT / "cluster.yaml").read_text().lower()
    assert "aws_secret_access_key" not in text and "ray_auth_mode=disabled" not in text


def test_cluster_yaml_nodes_fit_the_pinned_stack():
    cfg = load("cluster.yaml")
    nodes = cfg["available_node_types"]
    head = nodes[cfg["head_node_type"]]["node_config"]
    workers = [n for k, n in nodes.items() if k != cfg["head_node_type"]]
    # An explicit image on every node: the launcher's default DLAMI ships a CUDA 11 driver, too old for torch 2.14.
    assert all(n["node_config"].get("ImageId") for n in nodes.values())
    assert all("nvidia-driver" in n["node_config"]["ImageId"] for n in nodes.values())
    # The head launches workers (EC2 and iam:PassRole); workers only need S3: two profiles.
    assert all(
        w["node_config"]["IamInstanceProfile"]["Name"] != head["IamInstanceProfile"]["Name"] for w in workers
    )
    policy = json.loads((ROOT / "deploy" / "aws" / "head-policy.json").read_text())
    actions = {
        a
        for s in policy["Statement"]
        for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])
    }
    assert {"iam:PassRole", "ec2:RunInstances", "ec2:TerminateInstances"} <= actions
    gpu = [w for w in workers if w["node_config"]["InstanceType"].startswith(("g", "p"))]
    assert gpu and all(
        w["min_workers"] == 0 and w["resources"].get("GPU", 0) >= 1 and w["resources"].get("CPU") for w in gpu
    ), "GPU workers scale from zero and state their resources (no lookup needed)"


# --- KubeRay custom resources -------------------------------------------------------------------


def _closed(node):
    """A CRD's structural schema as the API server applies it with --validate=strict: objects with
    properties and no x-kubernetes-preserve-unknown-fields admit no other field."""
    if isinstance(node, list):
        return [_closed(v) for v in node]
    if not isinstance(node, dict):
        return node
    node = {k: _closed(v) for k, v in node.items()}
    if node.get("x-kubernetes-int-or-string"):
        node.pop("type", None)
        node["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if (
        node.get("type") == "object"
        and "properties" in node
        and "additionalProperties" not in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        node["additionalProperties"] = False
    return node


def crd_errors(doc: dict, crd_file: str) -> list[str]:
    if not KUBERAY.is_dir():
        pytest.skip("../shared/schemas is absent (a fresh clone): CRD validation skipped")
    crd = yaml.safe_load((KUBERAY / crd_file).read_text())
    (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    validator = jsonschema.Draft7Validator(_closed(v1["schema"]["openAPIV3Schema"]))
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(doc)]


CRDS = {
    "deploy/rayjob.yaml": "ray.io_rayjobs.yaml",
    "deploy/raycronjob.yaml": "ray.io_raycronjobs.yaml",
    "deploy/raycluster.yaml": "ray.io_rayclusters.yaml",
}


@pytest.mark.parametrize("name", sorted(CRDS))
def test_kuberay_manifests_validate_strictly(name):
    assert crd_errors(load(name), CRDS[name]) == []


def test_the_crd_validation_refuses_unknown_and_missing_fields():
    doc = load("deploy/raycronjob.yaml")
    doc["spec"]["rayJobTemplate"] = doc["spec"].pop("jobTemplate")
    errors = crd_errors(doc, CRDS["deploy/raycronjob.yaml"])
    assert any("'jobTemplate' is a required property" in e for e in errors)
    assert any("rayJobTemplate" in e and "not allowed" in e for e in errors)


def ray_cluster_specs() -> dict[str, dict]:
    return {
        "rayjob": load("deploy/rayjob.yaml")["spec"]["rayClusterSpec"],
        "raycronjob": load("deploy/raycronjob.yaml")["spec"]["jobTemplate"]["rayClusterSpec"],
        "raycluster": load("deploy/raycluster.yaml")["spec"],
    }


@pytest.mark.parametrize("name", ["rayjob", "raycronjob", "raycluster"])
def test_every_ray_cluster_authenticates_and_can_run_tasks(name):
    spec = ray_cluster_specs()[name]
    assert spec["authOptions"]["mode"] == "token"
    groups = spec["workerGroupSpecs"]
    assert spec.get("enableInTreeAutoscaling") or any(g["replicas"] > 0 for g in groups), "workers exist"
    assert all(g["maxReplicas"] > 0 for g in groups)
    image = spec["headGroupSpec"]["template"]["spec"]["containers"][0]["image"]
    assert all(c["image"] == image for g in groups for c in g["template"]["spec"]["containers"]), "one image"


@pytest.mark.parametrize("name", ["deploy/rayjob.yaml", "deploy/raycronjob.yaml"])
def test_jobs_end_and_install_nothing_at_run_time(name):
    spec = load(name)["spec"]
    spec = spec.get("jobTemplate", spec)
    assert spec["activeDeadlineSeconds"] > 0 and spec["shutdownAfterJobFinishes"]
    runtime_env = yaml.safe_load(spec.get("runtimeEnvYAML") or "{}") or {}
    assert "pip" not in runtime_env, "requirements live in the image (deploy/Dockerfile)"


# --- the plain Kubernetes CronJob ---------------------------------------------------------------


def k8s_unknown_fields(data, type_name: str, path: str = "") -> list[str]:
    """Fields of ``data`` that the Kubernetes API type ``type_name`` does not have (the kubernetes
    package's models carry each type's fields and their types)."""
    import kubernetes.client.models as models

    if type_name.startswith("list["):
        return [e for i, v in enumerate(data) for e in k8s_unknown_fields(v, type_name[5:-1], f"{path}[{i}]")]
    if type_name.startswith("dict("):
        inner = type_name[type_name.index(",") + 1 : -1].strip()
        return [e for k, v in data.items() for e in k8s_unknown_fields(v, inner, f"{path}.{k}")]
    if not hasattr(models, type_name):
        return []  # a scalar: str, int, bool, object, datetime
    cls = getattr(models, type_name)
    fields = {json_name: attr for attr, json_name in cls.attribute_map.items()}
    errors = []
    for key, value in data.items():
        if key not in fields:
            errors.append(f"{path}.{key}")
        else:
            errors += k8s_unknown_fields(value, cls.openapi_types[fields[key]], f"{path}.{key}")
    return errors


def k8s_errors(doc: dict, type_name: str) -> list[str]:
    from kubernetes.client import ApiClient

    errors = [f"unknown field {f}" for f in k8s_unknown_fields(doc, type_name)]
    try:  # the models refuse missing required fields and bad enum values
        ApiClient()._ApiClient__deserialize(doc, type_name)
    except (ValueError, TypeError) as exc:
        errors.append(str(exc))
    return errors


def test_cronjob_validates_as_a_batch_v1_cronjob():
    doc = load("deploy/cronjob.yaml")
    assert doc["apiVersion"] == "batch/v1" and k8s_errors(doc, "V1CronJob") == []
    bad = load("deploy/cronjob.yaml")
    bad["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["envs"] = []
    assert k8s_errors(bad, "V1CronJob") == [
        "unknown field .spec.jobTemplate.spec.template.spec.containers[0].envs"
    ]
    del bad["spec"]["schedule"]
    assert any("schedule" in e for e in k8s_errors(bad, "V1CronJob"))


def test_cronjob_reaches_the_cluster_with_its_token():
    cron = load("deploy/cronjob.yaml")
    cluster = load("deploy/raycluster.yaml")
    (container,) = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["RAY_AUTH_MODE"]["value"] == "token"
    secret = env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert secret == {"name": cluster["spec"]["authOptions"]["secretName"], "key": "auth_token"}
    # KubeRay names a cluster's head Service <name>-head-svc.
    assert env["RAY_ADDRESS"]["value"] == f"http://{cluster['metadata']['name']}-head-svc:8265"
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    assert "git clone" not in " ".join(container["args"]), "the code is in the cluster's image"
    assert os.path.basename(container["image"]).startswith("dfpipe:")


# --- installs from the lock -----------------------------------------------------------------------


def pins(name: str) -> dict[str, str]:
    """``package -> version`` of a lock file (pip-compile output: ``name==version`` lines)."""
    from packaging.utils import canonicalize_name

    out = {}
    for line in (ROOT / name).read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            package, sep, version = line.partition("==")
            assert sep and version, f"{name}: {line!r} is not pinned exactly"
            out[canonicalize_name(package)] = version
    return out


def wanted(name: str) -> set[str]:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    names = set()
    for line in (ROOT / name).read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            names.add(canonicalize_name(Requirement(line).name))
    return names


def test_every_install_uses_the_lock():
    """requirements.txt says what dfpipe needs; the locks pin every package installed, and every
    install (make install, hence CI; the cluster launcher's nodes; the deploy image) uses them."""
    runtime, test = pins("requirements.lock"), pins("requirements-test.lock")
    assert wanted("requirements.txt") <= set(runtime), "a requirement is missing from requirements.lock"
    assert wanted("requirements-test.txt") <= set(test), "a test tool is missing from requirements-test.lock"
    assert {k: test[k] for k in runtime} == runtime, "the two locks disagree: run `make lock`"
    for loose in (ROOT / "requirements.txt").read_text().splitlines():
        if "==" in loose:  # the versions requirements.txt pins are the ones locked
            from packaging.requirements import Requirement

            req = Requirement(loose.split("#")[0].strip())
            assert req.specifier.contains(runtime[req.name.lower()]), loose
    make = (ROOT / "Makefile").read_text()
    assert "pip install -r requirements-test.lock" in make  # quietly: its output goes to the install log
    assert "piptools compile" in make and "\nlock:" in make
    assert "pip install -q -r /home/ray/dfpipe/requirements.lock" in load("cluster.yaml")["setup_commands"][1]
    assert "/home/ray/dfpipe/requirements.lock" in load("cluster.yaml")["file_mounts"]
    assert (
        "RUN pip install --no-cache-dir -q -r requirements.lock"
        in (ROOT / "deploy" / "Dockerfile").read_text()
    )


def test_this_environment_is_the_lock():
    """What the tests run on is what the lock says (make install installs from it); a drifted
    environment is named here rather than found as an odd failure elsewhere."""
    from importlib.metadata import PackageNotFoundError, version

    drift = []
    for package, locked in pins("requirements-test.lock").items():
        try:
            installed = version(package)
        except PackageNotFoundError:
            drift.append(f"{package}: not installed, lock {locked}")
            continue
        if installed.split("+")[0] != locked:
            drift.append(f"{package}: installed {installed}, lock {locked}")
    assert not drift, "run `make install` (pip install -r requirements-test.lock): " + "; ".join(drift)


def merged(base: dict, patch: dict) -> dict:
    """``kubectl patch --type merge`` (RFC 7386): maps merge key by key, anything else replaces."""
    out = dict(base)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


def test_head_loss_settings_validate_and_keep_secrets_out_of_manifests():
    """GCS fault tolerance (the patch merged into the long-lived cluster) validates against the
    RayCluster CRD strictly, with its Redis password from a Secret; a RayJob whose cluster failed (a
    head lost) is retried on a new cluster (docs/cluster.md, "When the head dies")."""
    patch = load("deploy/gcs-ft-patch.yaml")
    cluster = merged(load("deploy/raycluster.yaml"), patch)
    assert crd_errors(cluster, CRDS["deploy/raycluster.yaml"]) == []
    ft = cluster["spec"]["gcsFaultToleranceOptions"]
    assert ft["redisAddress"] and ft["externalStorageNamespace"]
    assert "value" not in ft["redisPassword"] and ft["redisPassword"]["valueFrom"]["secretKeyRef"]["key"]
    assert load("deploy/rayjob.yaml")["spec"]["backoffLimit"] >= 1
    broken = merged(cluster, {"spec": {"gcsFaultToleranceOptions": {"redisAdress": "typo:6379"}}})
    assert any("redisAdress" in e for e in crd_errors(broken, CRDS["deploy/raycluster.yaml"]))
