"""A registered encoder loads without unpickling anything, through sslpipe and through MLflow's
pyfunc, and gives the features it gave in training; its plain weights load into torchvision."""

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow import MlflowClient

from pipelines.tracking import runs as tracking
from ssl_models.backbones import build_backbone
from ssl_models.export import Encoder

REPO = Path(__file__).resolve().parents[4]
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def encoder(name: str, **options) -> Encoder:
    """A backbone with weights other than its initialisation, and BatchNorm statistics other
    than the identity: a loader that dropped anything would change the features."""
    torch.manual_seed(7)
    backbone = build_backbone(name, **options)
    if name.startswith("vit"):
        backbone.enable_mask_token()  # as SimMIM/BEiT/iBOT leave it; not part of the export
    with torch.no_grad():
        for p in backbone.parameters():
            p.add_(0.05 * torch.randn_like(p))
        for m in backbone.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return Encoder(backbone, MEAN, STD, 32, {"name": name, "options": options}).eval()


ENCODERS = {
    "resnet": ("resnet18", {"width": 0.125, "cifar_stem": True, "stem_stride": 2}),
    "vit": ("vit_tiny", {"image_size": 32, "patch_size": 8, "depth": 2, "pool": "cls_mean"}),
    # torchvision's own architecture: width 1, the 7×7 stem
    "torchvision": ("resnet18", {"width": 1.0}),
}


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """Each encoder of ENCODERS logged into one run and registered as ``enc-<key>@candidate``;
    yields the store's URI, the encoders, a batch of images and where the files are."""
    root = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    run_id = client.create_run(tracking.experiment_id(client, uri, "reg")).info.run_id
    encoders = {key: encoder(name, **options) for key, (name, options) in ENCODERS.items()}
    images = torch.rand(5, 3, 32, 32)
    np.save(root / "images.npy", images.numpy())
    for key, enc in encoders.items():
        example = torch.rand(2, 3, 32, 32).numpy()
        model_uri = tracking.log_encoder(run_id, uri, enc, example, name=f"encoder-{key}")
        tracking.register(model_uri, uri, f"enc-{key}", ("candidate",))
    return uri, encoders, images, root


def test_a_registered_encoder_loads_with_pickle_disabled(registry):
    uri, encoders, images, root = registry
    # a fresh process, so MLflow reads the variable as a user's process would
    script = f"""
import json, numpy as np, torch, mlflow
from pipelines.eval.encoders import load_registered
images = torch.from_numpy(np.load({str(root / "images.npy")!r}))
mlflow.set_tracking_uri({uri!r})
out = {{}}
for key in {sorted(encoders)!r}:
    enc = load_registered(f"models:/enc-{{key}}@candidate", {uri!r})
    with torch.no_grad():
        np.save({str(root)!r} + f"/sslpipe-{{key}}.npy", enc(images).numpy())
    model = mlflow.pyfunc.load_model(f"models:/enc-{{key}}@candidate")
    np.save({str(root)!r} + f"/pyfunc-{{key}}.npy", model.predict(images.numpy()))
    out[key] = type(model.get_raw_model()).__name__
print(json.dumps(out))
"""
    env = {**os.environ, "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false"}
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == dict.fromkeys(encoders, "Encoder")
    for key, enc in encoders.items():
        with torch.no_grad():
            expected = enc(images).numpy()
        for route in ("sslpipe", "pyfunc"):
            got = np.load(root / f"{route}-{key}.npy")
            np.testing.assert_array_equal(got, expected, err_msg=f"{route} {key}")


def test_the_model_holds_no_pickle(registry):
    uri, _, _, _ = registry
    mlflow.set_tracking_uri(uri)
    local = Path(mlflow.artifacts.download_artifacts("models:/enc-resnet@candidate"))
    names = {p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()}
    assert {"data/encoder/backbone.safetensors", "data/encoder/encoder.json"} <= names
    assert not [n for n in names if n.endswith((".pkl", ".pth", ".pt", ".pickle"))], names
    for name in names:  # no pickle stream anywhere (pickle protocol 2+ starts with 0x80)
        assert (local / name).read_bytes()[:1] != b"\x80", name


def test_plain_weights_load_into_torchvision_and_give_the_same_features(registry):
    import torchvision
    from safetensors.torch import load_file

    uri, encoders, images, _ = registry
    mlflow.set_tracking_uri(uri)
    # what a user writes, without sslpipe
    path = mlflow.artifacts.download_artifacts("models:/enc-torchvision@candidate")
    resnet = torchvision.models.resnet18()
    resnet.fc = torch.nn.Identity()
    resnet.load_state_dict(load_file(f"{path}/data/encoder/backbone.safetensors"), strict=True)

    from safetensors import safe_open

    with safe_open(f"{path}/data/encoder/backbone.safetensors", "pt") as f:
        meta = f.metadata()
    mean = torch.tensor(json.loads(meta["mean"])).view(1, 3, 1, 1)
    std = torch.tensor(json.loads(meta["std"])).view(1, 3, 1, 1)
    assert int(meta["image_size"]) == 32
    with torch.no_grad():
        theirs = resnet.eval()((images - mean) / std)
        ours = encoders["torchvision"](images)
    torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-6)


def test_vit_weights_load_strictly_into_this_packages_vit(registry):
    from safetensors.torch import load_file

    uri, encoders, images, _ = registry
    mlflow.set_tracking_uri(uri)
    path = mlflow.artifacts.download_artifacts("models:/enc-vit@candidate")
    spec = json.loads(Path(f"{path}/data/encoder/encoder.json").read_text())["backbone"]
    vit = build_backbone(spec["name"], **spec["options"])
    vit.load_state_dict(load_file(f"{path}/data/encoder/backbone.safetensors"), strict=True)
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(vit.eval()((images - mean) / std), encoders["vit"](images))


def test_an_encoder_logged_as_a_pickle_is_refused_not_loaded(registry):
    from pipelines.eval.encoders import load_registered

    uri, encoders, _, _ = registry
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(experiment_id=tracking.experiment_id(MlflowClient(uri), uri, "reg")):
        info = mlflow.pytorch.log_model(
            encoders["resnet"], name="pickled", serialization_format="pickle"
        )
    with pytest.raises(TypeError, match=r"never loaded.*sslpipe register RUN --step N"):
        load_registered(info.model_uri, uri)


def test_a_model_not_there_names_the_store_and_what_it_holds(registry):
    from pipelines.eval.encoders import load_registered

    uri, _, _, _ = registry
    with pytest.raises(LookupError) as caught:
        load_registered("models:/nope@best", uri)
    assert str(caught.value) == (
        f"no registered model 'nope' at tracking URI {uri} (registered there: enc-resnet, "
        "enc-torchvision, enc-vit); pass --tracking-uri with the store the run logged to (the "
        "tracking_uri of its summary)"
    )
    with pytest.raises(LookupError, match=r"has no alias 'best' \(its aliases: candidate -> 1;"):
        load_registered("models:/enc-vit@best", uri)
    with pytest.raises(LookupError, match=r"has no version 7 \(its versions: 1\)"):
        load_registered("models:/enc-vit/7", uri)
