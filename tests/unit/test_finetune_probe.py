"""The fine-tuning probe's pieces: layer-wise lr groups, the augmentation, and that it learns."""

import math

import pytest
import torch

from benchmarks.finetune_probe import Classifier, Recipe, augment, finetune, param_groups, top1
from ssl_models.backbones import build_backbone


def tiny_vit(depth: int = 2, pos_embed: str = "sincos") -> torch.nn.Module:
    torch.manual_seed(0)
    return build_backbone(
        "vit_tiny",
        image_size=8,
        patch_size=4,
        dim=8,
        depth=depth,
        heads=2,
        pool="mean",
        pos_embed=pos_embed,
    )


def classifier(depth: int = 2, pos_embed: str = "sincos") -> Classifier:
    encoder = tiny_vit(depth, pos_embed)
    return Classifier(encoder, 8, 2, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def test_layer_decay_scales_each_layer_and_spares_1d_parameters_from_weight_decay():
    model = classifier(depth=2, pos_embed="relative")
    groups = param_groups(model, Recipe(layer_decay=0.5, weight_decay=0.05))
    scale_of = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    decay_of = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert len(scale_of) == len(named)  # every parameter in exactly one group
    # depth 2: embeddings are layer 0 (0.5³), block i layer i + 1, the norm and head layer 3 (1)
    expected = {
        "encoder.patch_embed.weight": 0.125,
        "encoder.cls_token": 0.125,
        "encoder.blocks.0.attn.qkv.weight": 0.25,
        "encoder.blocks.1.mlp.0.weight": 0.5,
        "encoder.norm.weight": 1.0,
        "encoder.rel_pos_bias.table": 1.0,  # with the last layer, as SimMIM's get_vit_layer
        "head.weight": 1.0,
    }
    for name, scale in expected.items():
        assert math.isclose(scale_of[id(named[name])], scale), name
    assert decay_of[id(named["encoder.blocks.0.attn.qkv.weight"])] == 0.05
    assert decay_of[id(named["head.weight"])] == 0.05
    for name in (
        "encoder.cls_token",
        "encoder.norm.weight",
        "head.bias",
        "encoder.patch_embed.bias",
    ):
        assert decay_of[id(named[name])] == 0.0, name
    # no layer decay: one lr for all
    assert {g["lr_scale"] for g in param_groups(model, Recipe())} == {1.0}


def test_layer_decay_needs_a_vit():
    model = Classifier(torch.nn.Flatten(), 192, 2, (0.5,) * 3, (0.25,) * 3)
    model.head = torch.nn.Linear(192, 2)
    with pytest.raises(ValueError, match="layer-decay needs a ViT"):
        param_groups(model, Recipe(layer_decay=0.75))
    assert len(param_groups(model, Recipe())) == 2  # the head's weight and its bias


def test_augment_without_padding_is_the_image_or_its_mirror_and_draws_both():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.uint8).view(2, 3, 4, 4).repeat(16, 1, 1, 1)
    out = augment(x, pad=0, gen=torch.Generator().manual_seed(0))
    plain, mirror = x.float() / 255, x.float().flip(-1) / 255
    same = (out == plain).flatten(1).all(1)
    flipped = (out == mirror).flatten(1).all(1)
    assert bool((same | flipped).all())
    assert 0 < int(flipped.sum()) < len(x)


def test_augment_with_padding_crops_a_window_of_the_reflected_image():
    x = torch.randint(0, 256, (8, 3, 6, 6), dtype=torch.uint8)
    out = augment(x, pad=2, gen=torch.Generator().manual_seed(1))
    padded = torch.nn.functional.pad(x.float() / 255, (2,) * 4, mode="reflect")
    for i in range(len(x)):
        windows = [
            w
            for dy in range(5)
            for dx in range(5)
            for w in (padded[i, :, dy : dy + 6, dx : dx + 6],)
            for w in (w, w.flip(-1))
        ]
        assert any(torch.equal(out[i], w) for w in windows)
    shifted = [not torch.equal(out[i], x[i].float() / 255) for i in range(len(x))]
    assert any(shifted)


def test_top1_known_answer():
    class FirstPixel(torch.nn.Module):  # class 1 where the first red pixel is bright
        def forward(self, x):
            return torch.stack([0.5 - x[:, 0, 0, 0], x[:, 0, 0, 0] - 0.5], 1)

    x = torch.zeros(4, 3, 2, 2, dtype=torch.uint8)
    x[:2, 0, 0, 0] = 255
    assert top1(FirstPixel(), x, torch.tensor([1, 1, 0, 1])) == 0.75


def test_finetuning_learns_a_colour_task_and_is_reproducible():
    # class 1: red images, class 0: blue ones, with noise; flips and crops keep the colour
    g = torch.Generator().manual_seed(0)
    y = torch.arange(128) % 2
    x = torch.randint(0, 96, (128, 3, 8, 8), generator=g)
    x[:, 0] += 150 * y.view(-1, 1, 1)
    x[:, 2] += 150 * (1 - y).view(-1, 1, 1)
    x = x.to(torch.uint8)
    data = (x[:96], y[:96], x[96:], y[96:])
    recipe = Recipe(epochs=6, batch_size=16, lr=3e-3, warmup_epochs=1, pad=1)
    before = top1(classifier(), x[96:], y[96:])
    result = finetune(classifier(), data, recipe, seed=3)
    assert result["top1"] == 1.0 and before < 1.0
    assert [e for e, _ in result["history"]] == [6]
    assert finetune(classifier(), data, recipe, seed=3)["train_loss"] == result["train_loss"]
    with pytest.raises(ValueError, match="fewer than one batch"):
        finetune(classifier(), (x[:8], y[:8], x[96:], y[96:]), recipe)
