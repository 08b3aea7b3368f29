"""The cluster and deployment files parse and hold what their consumers need."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_cluster_yaml_has_what_the_launcher_needs():
    cfg = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    for key in (
        "cluster_name",
        "max_workers",
        "provider",
        "auth",
        "available_node_types",
        "head_node_type",
        "setup_commands",
        "head_start_ray_commands",
        "worker_start_ray_commands",
    ):
        assert key in cfg, key
    assert cfg["provider"]["type"] == "aws" and cfg["provider"]["region"]
    nodes = cfg["available_node_types"]
    assert cfg["head_node_type"] in nodes
    gpu = [
        n for n in nodes.values() if n.get("node_config", {}).get("InstanceType", "").startswith(("g", "p"))
    ]
    assert gpu and all(n["min_workers"] == 0 for n in gpu), "a GPU worker type scaling from zero"
    assert any("requirements.txt" in c for c in cfg["setup_commands"])
    text = (ROOT / "cluster.yaml").read_text().lower()
    assert "aws_secret_access_key" not in text and "ray_auth_mode=disabled" not in text


def env_vars(node) -> list[dict]:
    """Every container ``env`` entry anywhere in a parsed manifest."""
    if isinstance(node, dict):
        found = (
            [e for e in node.get("env", []) if isinstance(e, dict)]
            if isinstance(node.get("env"), list)
            else []
        )
        return found + [e for v in node.values() for e in env_vars(v)]
    if isinstance(node, list):
        return [e for v in node for e in env_vars(v)]
    return []


def test_deploy_manifests_parse():
    kinds = {}
    for path in (ROOT / "deploy").glob("*.yaml"):
        doc = yaml.safe_load(path.read_text())
        kinds[doc["kind"]] = doc
        modes = [e.get("value") for e in env_vars(doc) if e.get("name") == "RAY_AUTH_MODE"]
        assert all(m == "token" for m in modes), f"{path.name}: RAY_AUTH_MODE {modes}"
    cron_env = {e["name"]: e for e in env_vars(kinds["CronJob"])}
    assert cron_env["RAY_AUTH_MODE"]["value"] == "token", "the client cron job authenticates"
    assert "secretKeyRef" in cron_env["RAY_AUTH_TOKEN"]["valueFrom"], "the token comes from a Secret"
    assert {"CronJob", "RayJob", "RayCronJob"} <= set(kinds)
    assert kinds["CronJob"]["spec"]["concurrencyPolicy"] == "Forbid"
    assert "jobs/rescore.py" in kinds["RayCronJob"]["spec"]["rayJobTemplate"]["spec"]["entrypoint"]
