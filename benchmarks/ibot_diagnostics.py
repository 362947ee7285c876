"""iBOT's (or DINOv2's) [CLS] head on a few fixed batches of the embedded dataset, in one process.

    env PYTHONPATH=$PWD .venv/bin/python -m benchmarks.ibot_diagnostics --steps 92 --knn \\
        --every 10 [--method dino_v2] [--set method_args.lambda_patch=0 ...]

The set-up of ``benchmarks/dino_diagnostics.py``: no Ray, the config ``sslpipe pretrain
--method M`` builds (recipe + laptop profile + ``--set``), the product's method and
``TrainStep``, views cut once by the product's ``ViewMaker`` from ``--images`` embedded training
images, the real run's steps per epoch for the schedules while the batches cycle.

Every ``--every`` steps it prints the step's own metrics (the [CLS] and patch losses, and for
DINOv2 KoLeo) and what tells the [CLS] head's uniform collapse apart, measured in eval mode on
one fixed batch of 256 whole training images: the teacher's [CLS] outputs' spread over the
batch (per-dimension std: 0 when every image gets the same output), the entropy of the batch
mean of their softmax at the teacher temperature (0 when every image gets the same one-hot,
ln K when outputs are varied or uniform), the mean row entropy (ln K when uniform), and the mean
pairwise cosine of the teacher's backbone [CLS] features (the exported encoder) and of its
head's bottleneck (the MLP output before its L2 normalisation). DINOv2's targets are
Sinkhorn-Knopp codes over the batch, not this softmax; the spread and cosines read the same.
"""

import argparse
import math

import torch
import torch.nn.functional as F

from benchmarks.swav_diagnostics import (
    add_fixed_batch_args,
    entropy,
    eval_images,
    fixed_batch_training,
    knn,
    mean_pairwise_cosine,
)
from pipelines.config import load_config
from pipelines.config_layers import parse_set


@torch.no_grad()
def cls_head_state(method, images: torch.Tensor, teacher_temp: float) -> dict[str, float]:
    """The teacher's [CLS] path on ``images`` (eval mode, as the exported encoder is used)."""
    was_training = method.training
    method.eval()
    try:
        tokens = method.teacher_backbone.forward_tokens(images)
        cls = tokens[:, 0]
        bottleneck = method.teacher_head.mlp(cls)
        out = method.teacher_head(cls)
        center = getattr(method, "center", None)
        c = center.center.reshape(1, -1) if center is not None else out.mean(0, keepdim=True)
        q = F.softmax((out - c) / teacher_temp, dim=1)
        return {
            "t_std_batch": float(out.std(0).mean()),
            "H_mean_tgt": float(entropy(q.mean(0, keepdim=True))),
            "tgt_H": float(entropy(q)),
            "cos_feat": mean_pairwise_cosine(method.encoder(images)),
            "cos_bottl": mean_pairwise_cosine(bottleneck),
        }
    finally:
        method.train(was_training)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--method", default="ibot", choices=["ibot", "dino_v2"])
    add_fixed_batch_args(ap, steps=92, images=2048)
    ap.add_argument("--every", type=int, default=10, help="print every N-th step (and the last)")
    ap.add_argument("--set", nargs="*", default=[], help="config overrides KEY=VALUE")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    cfg = load_config(args.method, overrides=parse_set(args.set))
    print(cfg.method_args)
    print(cfg.optim)
    print(cfg.backbone)
    print({k: (g.count, g.size, g.scale) for k, g in cfg.views.groups.items()})
    method, step_fn, batches = fixed_batch_training(cfg, args)
    probe, _ = eval_images(cfg, 26, 0)  # 260 whole training images
    probe = probe[:256]
    if args.knn:
        bank, query = eval_images(cfg, 200, 0), eval_images(cfg, 50, 1)
        print(f"kNN top-1 at initialisation: {knn(method.encoder, bank, query):.3f}", flush=True)

    keys = ("loss", "cls_loss", "patch_loss", "dino_loss", "ibot_loss", "koleo_loss")
    print(f"uniform entropy ln K = {math.log(cfg.method_args.out_dim):.4f}")
    for step in range(args.steps):
        result = step_fn(batches[step % len(batches)], step)
        if step % args.every and step != args.steps - 1:
            continue
        m = result.metrics
        losses = "  ".join(f"{k} {m[k]:.3f}" for k in keys if k in m)
        state = cls_head_state(method, probe, m["teacher_temp"])
        print(
            f"{step:4d} lr {m['lr']:.2e} τ_t {m['teacher_temp']:.4f} | {losses} | "
            + "  ".join(f"{k} {v:.4f}" for k, v in state.items()),
            flush=True,
        )

    if args.knn:
        print(f"kNN top-1 after {args.steps} steps: {knn(method.encoder, bank, query):.3f}")


if __name__ == "__main__":
    main()
