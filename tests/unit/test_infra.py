"""infra/ holds what a user deploys: check it against Ray's schema and against this repo."""

import functools
import json
import re
import shlex
from pathlib import Path

import yaml

from pipelines.cli import build_parser
from pipelines.config.layers import build_config, deep_merge, recipe

INFRA = Path(__file__).resolve().parents[2] / "infra"
IMAGE = "sslpipe:0.1.0"
# the image pushed to a registry, pinned by its digest
OUR_IMAGE = re.compile(rf"\S+/{re.escape(IMAGE)}@sha256:[0-9a-f]{{64}}")


def load_all(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def test_cluster_launcher_config_passes_rays_own_validation():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(yaml.safe_load((INFRA / "cluster" / "aws.yaml").read_text()))
    validate_config(config)
    nodes = config["available_node_types"]
    assert nodes["cpu_data"]["resources"].get("data", 0) > 0
    assert nodes["gpu_train"]["resources"].get("train", 0) > 0
    assert nodes["head"]["resources"] == {"CPU": 0}
    assert OUR_IMAGE.fullmatch(config["docker"]["image"])


def test_dockerfile_is_cuda_based_non_root_and_installs_the_pinned_project():
    text = (INFRA / "docker" / "Dockerfile").read_text()
    assert re.match(r"nvidia/cuda:\S+-runtime", dockerfile_base())
    assert re.search(r"^USER ray$", text, re.M)
    assert "pyproject.toml" in text and "pip install --no-deps /src" in text
    assert f"-t {IMAGE}" in text


def test_kuberay_manifests_name_the_image_and_a_real_entrypoint():
    cluster = load_all(INFRA / "k8s" / "raycluster.yaml")[0]
    assert cluster["kind"] == "RayCluster" and cluster["spec"]["rayVersion"] == "2.60.0"
    groups = [cluster["spec"]["headGroupSpec"], *cluster["spec"]["workerGroupSpecs"]]
    images = {c["image"] for g in groups for c in g["template"]["spec"]["containers"]}
    assert len(images) == 1 and OUR_IMAGE.fullmatch(images.pop())
    gpu = next(g for g in cluster["spec"]["workerGroupSpecs"] if g["groupName"] == "gpu-train")
    assert "nvidia.com/gpu" in gpu["template"]["spec"]["containers"][0]["resources"]["limits"]

    configmap, job = load_all(INFRA / "k8s" / "rayjob.yaml")
    assert job["kind"] == "RayJob" and configmap["kind"] == "ConfigMap"
    assert job["spec"]["clusterSelector"]["ray.io/cluster"] == cluster["metadata"]["name"]
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[0] == "sslpipe"
    args = build_parser().parse_args(argv[1:])  # exits on an unknown flag
    mount = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["volumeMounts"]
    config_dir = next(m["mountPath"] for m in mount if m["name"] == "sslpipe-config")
    assert Path(args.config).parent == Path(config_dir)
    assert Path(args.config).name in configmap["data"]


def test_configmap_configs_are_valid_sslpipe_configs():
    configmap = load_all(INFRA / "k8s" / "rayjob.yaml")[0]
    assert configmap["data"], "the ConfigMap holds no config"
    for name, text in configmap["data"].items():
        user = yaml.safe_load(text)
        cfg = build_config(deep_merge(recipe(user["method"]), user))  # unknown keys raise
        assert cfg.train.use_gpu and cfg.data.path.startswith("s3://"), name


def test_mlflow_server_uses_postgres_and_s3():
    docs = {
        (d["kind"], d["metadata"]["name"]): d for d in load_all(INFRA / "mlflow" / "mlflow.yaml")
    }
    server = docs[("Deployment", "mlflow")]["spec"]["template"]["spec"]["containers"][0]
    command = " ".join(server["args"])
    assert "--backend-store-uri postgresql://" in command
    assert "--artifacts-destination s3://" in command
    assert server["image"] == IMAGE
    assert ("StatefulSet", "mlflow-postgres") in docs


def test_placement_keys_name_resources_the_node_groups_advertise():
    configmap = load_all(INFRA / "k8s" / "rayjob.yaml")[0]
    cluster = load_all(INFRA / "k8s" / "raycluster.yaml")[0]
    groups = {
        g["groupName"]: json.loads(yaml.safe_load(g["rayStartParams"]["resources"]))
        for g in cluster["spec"]["workerGroupSpecs"]
    }
    launcher = yaml.safe_load((INFRA / "cluster" / "aws.yaml").read_text())
    nodes = {k: v["resources"] for k, v in launcher["available_node_types"].items()}
    for name, text in configmap["data"].items():
        user = yaml.safe_load(text)
        cfg = build_config(deep_merge(recipe(user["method"]), user))
        assert cfg.train.worker_resources and cfg.data.task_resources, name
        for advertised in (groups["gpu-train"], nodes["gpu_train"]):
            assert set(cfg.train.worker_resources) <= set(advertised), name
        for advertised in (groups["cpu-data"], nodes["cpu_data"]):
            assert set(cfg.data.task_resources) <= set(advertised), name
        # each GPU node holds as many workers as it has GPUs
        gpus = int(
            next(g for g in cluster["spec"]["workerGroupSpecs"] if g["groupName"] == "gpu-train")[
                "template"
            ]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]
        )
        assert groups["gpu-train"]["train"] // cfg.train.worker_resources["train"] == gpus


# --- closed by default -------------------------------------------------------------------------


def aws_config() -> dict:
    return yaml.safe_load((INFRA / "cluster" / "aws.yaml").read_text())


@functools.cache
def k8s_docs() -> list[dict]:
    paths = [*sorted((INFRA / "k8s").glob("*.yaml")), INFRA / "mlflow" / "mlflow.yaml"]
    return [doc for path in paths for doc in load_all(path)]


def the(kind: str, name: str) -> dict:
    found = [d for d in k8s_docs() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert found, f"no {kind} {name} in infra/k8s or infra/mlflow"
    return found[0]


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def test_kuberay_token_authentication_is_on():
    # KubeRay (>= 1.5.1) creates the Secret (named after the cluster, key auth_token) and sets
    # RAY_AUTH_MODE and RAY_AUTH_TOKEN on every Ray container; the RayJob's submitter is a pod of
    # its own that calls the Jobs API, so it carries the same token itself.
    cluster = the("RayCluster", "sslpipe")
    assert cluster["spec"]["authOptions"] == {"mode": "token"}
    job = the("RayJob", "sslpipe-pretrain")
    env = env_of(job["spec"]["submitterPodTemplate"]["spec"]["containers"][0])
    assert env["RAY_AUTH_MODE"]["value"] == "token"
    secret = {"name": cluster["metadata"]["name"], "key": "auth_token"}
    assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == secret


def test_aws_ray_token_authentication_is_on():
    # AWS: every container has RAY_AUTH_MODE=token and reads the token `ray get-auth-token
    # --generate` wrote on the user's machine, copied to every node
    launcher = aws_config()
    docker_env = dict(
        shlex.split(option)[1].split("=", 1)
        for option in launcher["docker"]["run_options"]
        if shlex.split(option)[0] in ("--env", "-e")
    )
    assert docker_env["RAY_AUTH_MODE"] == "token"
    assert launcher["file_mounts"][docker_env["RAY_AUTH_TOKEN_PATH"]] == "~/.ray/auth_token"


def test_aws_dashboard_listens_on_localhost_only():
    launcher = aws_config()
    start = next(c for c in launcher["head_start_ray_commands"] if "ray start" in c)
    argv = shlex.split(start.split(";")[-1])
    flags = dict(a.split("=", 1) for a in argv if a.startswith("--") and "=" in a)
    # Ray's default is localhost too; users reach it through `ray dashboard` (SSH forwarding)
    assert flags.get("--dashboard-host", "localhost") in ("localhost", "127.0.0.1")


def test_aws_nodes_require_imdsv2():
    launcher = aws_config()
    for name, node in launcher["available_node_types"].items():
        metadata = node["node_config"].get("MetadataOptions", {})
        assert metadata.get("HttpTokens") == "required", name
        # the launcher runs containers with --net=host: one hop reaches IMDS, no more is needed
        assert metadata.get("HttpPutResponseHopLimit", 1) == 1, name


def dockerfile_base() -> str:
    text = (INFRA / "docker" / "Dockerfile").read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, re.M))
    base = re.search(r"^FROM (\S+)", text, re.M).group(1)
    return re.sub(r"\$\{?(\w+)\}?", lambda m: args[m.group(1)], base)
