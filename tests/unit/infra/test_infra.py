"""infra/ holds what a user deploys: check it against Ray's schema and against this repo."""

import configparser
import functools
import importlib.metadata
import json
import re
import shlex
import tomllib
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import yaml

from pipelines.cli import build_parser
from pipelines.config.layers import build_config, deep_merge, recipe

INFRA = Path(__file__).resolve().parents[3] / "infra"
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
    assert OUR_IMAGE.fullmatch(server["image"])
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

NAMESPACE = "sslpipe"  # every k8s manifest is applied with `kubectl -n sslpipe apply -f`
DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")
RAY_PORTS = (6379, 8265, 10001)  # GCS, dashboard / Jobs API, Ray Client


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


def ray_group(group: str | None = None) -> dict:
    """The head group (``None``) or the named worker group of the RayCluster."""
    spec = the("RayCluster", "sslpipe")["spec"]
    if group is None:
        return spec["headGroupSpec"]
    return next(g for g in spec["workerGroupSpecs"] if g["groupName"] == group)


def ray_container(group: str | None = None) -> dict:
    return ray_group(group)["template"]["spec"]["containers"][0]


def pod_templates() -> dict[str, dict]:
    """Every pod template of the k8s manifests, by where it is (for messages)."""
    out = {}
    for d in k8s_docs():
        where, spec = f"{d['kind']}/{d['metadata']['name']}", d.get("spec", {})
        if d["kind"] in ("Deployment", "StatefulSet"):
            out[where] = spec["template"]
        elif d["kind"] == "RayCluster":
            out[f"{where}/head"] = spec["headGroupSpec"]["template"]
            out |= {f"{where}/{g['groupName']}": g["template"] for g in spec["workerGroupSpecs"]}
        elif d["kind"] == "RayJob":
            out[f"{where}/submitter"] = spec["submitterPodTemplate"]
    return out


def canonical(requirement: str) -> str:
    """The distribution a requirement names, normalised: ``Flask-WTF<2; extra == "auth"`` ->
    ``flask-wtf``."""
    return re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def ray_pod_labels(group: str | None = None) -> dict[str, str]:
    """The labels of a pod of the RayCluster: its template's plus those KubeRay sets."""
    own = ray_group(group)["template"].get("metadata", {}).get("labels", {})
    node = {"ray.io/node-type": "head"} if group is None else {"ray.io/node-type": "worker"}
    return {**own, "ray.io/cluster": "sslpipe", **node}


@dataclass(frozen=True)
class Peer:
    """A source of traffic: a pod (its labels and namespace) or, with ``labels=None``, an address
    outside the Kubernetes cluster."""

    labels: dict[str, str] | None
    namespace: str = NAMESPACE


def selects(selector: dict, labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, f"only matchLabels is modelled here: {selector}"
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def peer_matches(rule_peer: dict, peer: Peer) -> bool:
    if "ipBlock" in rule_peer:  # taken to admit every outside address, whatever its CIDR
        return peer.labels is None
    if peer.labels is None:
        return False
    namespaces = rule_peer.get("namespaceSelector")
    in_namespace = (
        peer.namespace == NAMESPACE
        if namespaces is None
        else selects(namespaces, {"kubernetes.io/metadata.name": peer.namespace})
    )
    return in_namespace and selects(rule_peer.get("podSelector", {}), peer.labels)


def admitted(pod: dict[str, str], port: int, peer: Peer) -> bool:
    """NetworkPolicy ingress semantics: a pod no policy selects admits everything; a selected pod
    admits what some ingress rule of a policy selecting it admits (no ``ports``: every port; no
    ``from``: every source)."""
    policies = [
        p["spec"]
        for p in k8s_docs()
        if p["kind"] == "NetworkPolicy"
        and selects(p["spec"]["podSelector"], pod)
        and "Ingress" in p["spec"].get("policyTypes", ["Ingress"])
    ]
    if not policies:
        return True
    for rule in (r for p in policies for r in p.get("ingress") or []):
        if rule.get("ports") and not any(p.get("port") == port for p in rule["ports"]):
            continue
        if not rule.get("from") or any(peer_matches(f, peer) for f in rule["from"]):
            return True
    return False


def test_network_policies_admit_only_the_clusters_own_pods():
    head, worker = ray_pod_labels(), ray_pod_labels("gpu-train")
    mlflow = the("Deployment", "mlflow")["spec"]["template"]["metadata"]["labels"]
    postgres = the("StatefulSet", "mlflow-postgres")["spec"]["template"]["metadata"]["labels"]
    submitter = the("RayJob", "sslpipe-pretrain")["spec"]["submitterPodTemplate"]
    strangers = [
        Peer({"app": "anything-else"}),  # another pod of the namespace
        Peer(worker, namespace="elsewhere"),  # the cluster's labels, in another namespace
        Peer(None),  # outside the Kubernetes cluster
    ]
    for port in RAY_PORTS:
        assert admitted(head, port, Peer(worker)), port
        assert admitted(head, port, Peer(ray_pod_labels("cpu-data"))), port
        for peer in strangers:
            assert not admitted(head, port, peer), (port, peer)
    assert not admitted(worker, 10002, strangers[0])  # workers' ports too (raylet, workers)
    # the RayJob submitter and KubeRay itself (it polls job status) reach the Jobs API only
    operator = Peer({"app.kubernetes.io/name": "kuberay-operator"}, namespace="kuberay-system")
    for peer in (Peer(submitter.get("metadata", {}).get("labels", {})), operator):
        assert admitted(head, 8265, peer) and not admitted(head, 6379, peer), peer
    for peer in (Peer(head), Peer(worker)):
        assert admitted(mlflow, 5000, peer), peer
        assert not admitted(postgres, 5432, peer), peer
    assert admitted(postgres, 5432, Peer(mlflow))
    for peer in strangers:
        assert not admitted(mlflow, 5000, peer) and not admitted(postgres, 5432, peer), peer


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


def test_images_are_pinned_by_digest():
    images = {"Dockerfile FROM": dockerfile_base()}
    launcher = aws_config()
    images["aws.yaml docker.image"] = launcher["docker"]["image"]
    for where, template in pod_templates().items():
        for c in template["spec"]["containers"] + template["spec"].get("initContainers", []):
            images[f"{where}/{c['name']}"] = c["image"]
    for where, image in images.items():
        assert DIGEST.search(image), f"{where}: {image} is not pinned by digest"
    ours = {image for image in images.values() if f"/{IMAGE}@" in image}
    assert len(ours) == 1, f"every sslpipe image reference names the same digest: {ours}"


def test_every_pod_runs_as_non_root_on_a_read_only_root_within_limits():
    autoscaler = the("RayCluster", "sslpipe")["spec"].get("autoscalerOptions", {})
    for where, template in pod_templates().items():
        spec = template["spec"]
        pod = spec.get("securityContext", {})
        assert pod.get("runAsNonRoot") is True, where
        # a named USER (the image's `ray`) cannot be checked against root: give the uid
        assert isinstance(pod.get("runAsUser"), int) and pod["runAsUser"] > 0, where
        assert pod.get("seccompProfile") == {"type": "RuntimeDefault"}, where
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        containers = spec["containers"] + spec.get("initContainers", [])
        if where.endswith("/head"):
            containers.append({"name": "autoscaler", **autoscaler})
        for c in containers:
            sc = c.get("securityContext", {})
            assert sc.get("allowPrivilegeEscalation") is False, (where, c["name"])
            assert sc.get("readOnlyRootFilesystem") is True, (where, c["name"])
            assert sc.get("capabilities") == {"drop": ["ALL"]}, (where, c["name"])
            for bound in ("requests", "limits"):
                held = c.get("resources", {}).get(bound, {})
                assert {"cpu", "memory"} <= set(held), (where, c["name"], bound)
            # what a read-only root still needs to write: temporary files (Ray's session dir)
            mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
            assert "emptyDir" in volumes.get(mounts.get("/tmp"), {}), (where, c["name"], "/tmp")


def test_mlflow_server_requires_a_login_and_names_its_hosts():
    from mlflow.cli import server as mlflow_server
    from mlflow.server.security_utils import get_default_allowed_hosts, is_allowed_host_header

    container = the("Deployment", "mlflow")["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["mlflow", "server"]
    params = mlflow_server.make_context("server", list(container["args"])).params
    assert params["app_name"] == "basic-auth"
    allowed = [h.strip() for h in params["allowed_hosts"].split(",")]
    configmap = yaml.safe_load(load_all(INFRA / "k8s" / "rayjob.yaml")[0]["data"]["pretrain.yaml"])
    head = ray_container()
    uris = [configmap["tracking"]["uri"], env_of(head)["MLFLOW_TRACKING_URI"]["value"]]
    for host in {urlparse(uri).netloc for uri in uris}:
        assert not is_allowed_host_header(get_default_allowed_hosts(), host)  # MLflow's 403
        assert is_allowed_host_header(allowed, host), host
    assert not is_allowed_host_header(allowed, "mlflow.attacker.example:5000")
    # the image holds what the basic-auth app imports (MLflow's `auth` extra): the `server` extra
    project = tomllib.loads((INFRA.parent / "pyproject.toml").read_text())["project"]
    server = {canonical(r) for r in project["optional-dependencies"]["server"]}
    auth = [r for r in importlib.metadata.requires("mlflow") if 'extra == "auth"' in r]
    assert auth and {canonical(r) for r in auth} <= server, auth


def test_mlflow_secrets_come_from_the_environment_not_the_command_line():
    deployment = the("Deployment", "mlflow")["spec"]["template"]["spec"]
    container = deployment["containers"][0]
    argv = container["command"] + container["args"]
    assert not any("$(" in a for a in argv), "a secret expanded into the command line"
    backend = urlparse(argv[argv.index("--backend-store-uri") + 1])
    assert backend.scheme == "postgresql" and backend.password is None
    env = env_of(container)
    for var in ("PGPASSWORD", "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"):
        assert "secretKeyRef" in env[var]["valueFrom"], var
    # the auth app keeps its users in PostgreSQL too (its default, a SQLite file in the working
    # directory, needs a writable root and dies with the pod)
    config_path = Path(env["MLFLOW_AUTH_CONFIG_PATH"]["value"])
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == str(config_path.parent))
    volume = next(v for v in deployment["volumes"] if v["name"] == mount["name"])
    ini = configparser.ConfigParser()
    ini.read_string(the("ConfigMap", volume["configMap"]["name"])["data"][config_path.name])
    auth_db = urlparse(ini["mlflow"]["database_uri"])
    assert auth_db.scheme == "postgresql" and auth_db.password is None
    # Ray pods that log to MLflow (the driver on the head, rank 0 on a GPU worker) log in
    for container in (ray_container(), ray_container("gpu-train")):
        env = env_of(container)
        for var in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            assert "secretKeyRef" in env[var]["valueFrom"], var
