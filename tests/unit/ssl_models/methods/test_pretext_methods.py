import pytest
import torch

from ssl_models.backbones import build_backbone
from ssl_models.methods.jigsaw import Jigsaw, JigsawConfig, standardise_tiles
from ssl_models.methods.relative_loc import RelativeLoc, RelativeLocConfig
from ssl_models.methods.rotnet import RotNet, RotNetConfig


def make(key: str) -> torch.nn.Module:
    torch.manual_seed(0)
    backbone = build_backbone("resnet18", width=0.125, cifar_stem=True, stem_stride=2)
    if key == "rotnet":
        return RotNet(backbone, RotNetConfig())
    if key == "relative_loc":
        return RelativeLoc(backbone, RelativeLocConfig(head_hidden_dim=32))
    return Jigsaw(backbone, JigsawConfig(num_permutations=10, head_hidden_dim=32))


def batch(key: str, b: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    if key == "rotnet":
        return {
            "global": torch.randn(b, 4, 3, 16, 16, generator=g),
            "rotation": torch.arange(4).repeat(b, 1),
        }
    if key == "relative_loc":
        return {
            "patches": torch.randn(b, 2, 3, 8, 8, generator=g),
            "position": torch.randint(0, 8, (b,), generator=g),
        }
    return {
        "tiles": torch.randn(b, 9, 3, 8, 8, generator=g),
        "permutation": torch.randint(0, 10, (b,), generator=g),
    }


KEYS = ["rotnet", "relative_loc", "jigsaw"]


@pytest.mark.parametrize("key", KEYS)
def test_forward_backward_and_the_loss_falls_on_a_fixed_batch(key):
    method, data = make(key), batch(key)
    opt = torch.optim.SGD(method.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(20):
        out = method(data)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    assert sum(losses[-3:]) / 3 < 0.7 * sum(losses[:3]) / 3, losses
    assert 0.0 <= out["accuracy"].item() <= 1.0 and out["accuracy"].ndim == 0
    assert any(torch.count_nonzero(p.grad) for p in method.backbone.parameters())


@pytest.mark.parametrize("key", KEYS)
def test_state_dict_round_trip(key):
    method = make(key)
    opt = torch.optim.SGD(method.parameters(), lr=0.1)
    method(batch(key))["loss"].backward()
    opt.step()
    clone = make(key)
    clone.load_state_dict(method.state_dict())
    method.eval(), clone.eval()
    data = batch(key, seed=1)
    torch.testing.assert_close(method(data)["loss"], clone(data)["loss"])


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("b", [1, 2])
def test_classifier_head_shapes(key, b):
    method = make(key)
    method.classifier.eval()  # BatchNorm in train mode cannot take a batch of 1
    width = method.backbone.out_dim
    inputs = {"rotnet": width, "relative_loc": 2 * width, "jigsaw": 9 * width}[key]
    classes = {"rotnet": 4, "relative_loc": 8, "jigsaw": 10}[key]
    assert method.classifier(torch.randn(b, inputs)).shape == (b, classes)


@pytest.mark.parametrize(
    "key, bad, message",
    [
        ("rotnet", {"rotation": torch.zeros(8, 3, dtype=torch.long)}, "rotation"),
        ("relative_loc", {"patches": torch.randn(8, 3, 3, 8, 8)}, r"patches \(B, 2, 3, S, S\)"),
        ("jigsaw", {"permutation": torch.zeros(7, dtype=torch.long)}, r"permutation \(B,\)"),
    ],
)
def test_bad_batches_name_what_is_wrong(key, bad, message):
    with pytest.raises(ValueError, match=message):
        make(key)({**batch(key), **bad})


def test_tiles_are_standardised_per_tile_and_channel():
    tiles = torch.rand(5, 3, 8, 8) * torch.tensor([10.0, 1.0, 0.1]).view(1, 3, 1, 1) + 4.0
    tiles[0, 2] = 7.0  # a flat channel: left at zero, not divided by zero
    out = standardise_tiles(tiles)
    torch.testing.assert_close(out.mean(dim=(2, 3)), torch.zeros(5, 3), atol=1e-4, rtol=0)
    std = out.std(dim=(2, 3))
    assert std[0, 2] == 0.0
    std[0, 2] = 1.0
    torch.testing.assert_close(std, torch.ones(5, 3), atol=1e-4, rtol=0)
