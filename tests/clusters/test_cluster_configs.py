"""The cluster definitions in clusters/ are valid for the Ray that alambic pins, checked offline.

The two `ray up` YAMLs go through what `ray up` itself does before it talks to a cloud
(``ray.autoscaler._private.commands._bootstrap_config``): ``prepare_config`` (merge with the
provider's defaults.yaml, check the docker section, fill per-type worker counts) and then
``validate_config``, which validates against the JSON schema shipped in the installed ray package
(``ray/autoscaler/ray-schema.json``) and checks head type and worker counts. The raw files are also
validated against that schema directly, so that a key the defaults would mask is still caught.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import PROJECT

CLUSTERS = PROJECT / "clusters"
RAY_UP = {"aws": CLUSTERS / "aws-gpu.yaml", "gcp": CLUSTERS / "gcp-gpu.yaml"}
KUBERAY = CLUSTERS / "kuberay-raycluster.yaml"


def ray_version() -> str:
    import ray

    return ray.__version__


def ray_schema() -> dict:
    import ray.autoscaler

    path = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    return json.loads(path.read_text(encoding="utf-8"))


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def prepared(raw: dict) -> dict:
    """The config as `ray up` validates it: merged with defaults, then checked by Ray."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(copy.deepcopy(raw))
    validate_config(config)
    return config


def image_tag(image: str) -> str:
    return image.rsplit(":", 1)[1]


# --- ray up: AWS and GCP --------------------------------------------------------------------


@pytest.mark.parametrize("cloud", sorted(RAY_UP))
def test_ray_up_config_passes_rays_own_validation(cloud):
    import jsonschema

    raw = load(RAY_UP[cloud])
    jsonschema.validate(raw, ray_schema())
    config = prepared(raw)
    assert config["provider"]["type"] == cloud
    assert config["head_node_type"] in config["available_node_types"]


def test_rays_validation_rejects_a_broken_config():
    """The check above has teeth: a misspelt key and a fractional GPU count are refused."""
    import jsonschema

    raw = load(RAY_UP["aws"])
    raw["idle_timeout_minute"] = 5
    with pytest.raises(jsonschema.ValidationError, match="idle_timeout_minute"):
        prepared(raw)
    raw = load(RAY_UP["aws"])
    raw["available_node_types"]["gpu-1x-a10g"]["resources"]["GPU"] = 0.5
    with pytest.raises(jsonschema.ValidationError):
        prepared(raw)


@pytest.mark.parametrize("cloud", sorted(RAY_UP))
def test_ray_up_head_is_cpu_and_workers_have_gpus(cloud):
    config = prepared(load(RAY_UP[cloud]))
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0 and head["max_workers"] == 0
    workers = {name: t for name, t in types.items() if name != config["head_node_type"]}
    assert workers and all(t["resources"]["GPU"] >= 1 for t in workers.values())
    for t in workers.values():  # the autoscaler starts from nothing and stays under the cap
        assert 0 == t["min_workers"] <= t["max_workers"] <= config["max_workers"]
    assert config["idle_timeout_minutes"] > 0


@pytest.mark.parametrize("cloud", sorted(RAY_UP))
def test_ray_up_image_is_the_pinned_ray_and_installs_alambic(cloud):
    config = prepared(load(RAY_UP[cloud]))
    image = config["docker"]["image"]
    assert image.startswith("rayproject/ray:") and image.endswith("-gpu")
    assert image_tag(image).split("-")[0] == ray_version() == "2.60.0"
    setup = " ".join(config["setup_commands"])
    assert "pip install" in setup and "alambic" in setup
    # the wheel the setup installs is the folder file_mounts copies
    assert "/home/ray/alambic-dist" in config["file_mounts"] and "/home/ray/alambic-dist/" in setup


def test_aws_workers_can_reach_the_artifact_store():
    config = prepared(load(RAY_UP["aws"]))
    for name, t in config["available_node_types"].items():
        if name != config["head_node_type"]:  # the head gets Ray's default instance profile
            assert t["node_config"]["IamInstanceProfile"]["Arn"].startswith("arn:aws:iam::")
            assert t["node_config"]["InstanceType"].startswith("g5.")


def test_gcp_gpu_nodes_terminate_on_host_maintenance():
    config = prepared(load(RAY_UP["gcp"]))
    for name, t in config["available_node_types"].items():
        if name == config["head_node_type"]:
            continue
        node = t["node_config"]
        # Compute Engine's Scheduling is an object; a list of one-key items is not one
        assert isinstance(node["scheduling"], dict) and node["scheduling"]["onHostMaintenance"] == "TERMINATE"
        if node["machineType"].startswith("n1-"):  # a G2 machine type brings its L4 itself
            assert node["guestAccelerators"][0]["acceleratorType"] in ("nvidia-tesla-t4", "nvidia-l4")
        assert node["serviceAccounts"][0]["email"].startswith("ray-autoscaler-sa-v1@")


# --- KubeRay ----------------------------------------------------------------------------------
# The RayCluster schema is the CRD that the KubeRay operator installs (its Helm chart); it does not
# ship with the ray package and cannot be downloaded here, so the structure that alambic relies on
# is checked by hand: the kind, the head and GPU worker groups, the images, the GPU limits, the
# rayStartParams (strings, as the CRD requires) and the store credentials.


def raycluster() -> dict:
    docs = [d for d in yaml.safe_load_all(KUBERAY.read_text(encoding="utf-8")) if d]
    [cluster] = [d for d in docs if d.get("kind") == "RayCluster"]
    return cluster


def containers(group: dict) -> list[dict]:
    return group["template"]["spec"]["containers"]


def test_kuberay_manifest_is_a_raycluster_with_head_and_gpu_workers():
    cluster = raycluster()
    assert cluster["apiVersion"] == "ray.io/v1"
    assert cluster["metadata"]["name"]
    spec = cluster["spec"]
    assert spec["rayVersion"] == ray_version()
    assert spec["enableInTreeAutoscaling"] is True and spec["autoscalerOptions"]["idleTimeoutSeconds"] > 0
    head = spec["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict)
    assert all(isinstance(v, str) for v in head["rayStartParams"].values())
    assert containers(head)[0]["resources"]["limits"].get("nvidia.com/gpu", 0) == 0
    [gpu] = spec["workerGroupSpecs"]
    assert isinstance(gpu["rayStartParams"], dict) and gpu["groupName"]
    assert 0 == gpu["minReplicas"] <= gpu["replicas"] <= gpu["maxReplicas"]
    limits = containers(gpu)[0]["resources"]["limits"]
    assert int(limits["nvidia.com/gpu"]) >= 1
    assert containers(gpu)[0]["resources"]["requests"]["nvidia.com/gpu"] == limits["nvidia.com/gpu"]


def test_kuberay_images_are_pinned_to_the_installed_ray():
    spec = raycluster()["spec"]
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    for group in groups:
        for container in containers(group):
            assert container["image"].startswith("rayproject/ray:")
            assert image_tag(container["image"]).startswith(f"{ray_version()}-py311")


def test_kuberay_pods_get_the_store_credentials_from_a_secret():
    spec = raycluster()["spec"]
    for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
        env = {e["name"]: e for e in containers(group)[0]["env"]}
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            ref = env[key]["valueFrom"]["secretKeyRef"]
            assert ref["name"] == "alambic-store" and ref["key"] == key and not ref.get("optional")


# --- the README -------------------------------------------------------------------------------


def test_readme_mentions_every_file_in_clusters():
    readme = (CLUSTERS / "README.md").read_text(encoding="utf-8")
    files = [p.name for p in CLUSTERS.iterdir() if p.is_file() and p.name != "README.md"]
    assert files
    missing = [name for name in files if name not in readme]
    assert not missing, f"clusters/README.md does not mention {missing}"
