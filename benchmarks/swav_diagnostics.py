"""SwAV's training dynamics on a few fixed batches of the embedded dataset, in one process.

    env PYTHONPATH=$PWD .venv/bin/python -m benchmarks.swav_diagnostics --steps 60 \\
        [--knn] [--set method_args.epsilon=0.05 optim.base_lr=0.3 ...]

No Ray: the config is the one ``sslpipe pretrain --method swav`` builds (recipe + laptop
profile, plus ``--set`` overrides), the method and ``TrainStep`` are the product's, and the
views are cut once by the product's ``ViewMaker`` from ``--images`` embedded training images
(the photometric part is drawn afresh every step on the training side, as in a run). The
schedules (warm-up, prototype freeze, cosine) use the real run's steps per epoch
(``--steps-per-epoch``, 23 for 6,000 images at batch 256) while the batches cycle.

Per step it prints what tells a collapse apart: the loss; the Sinkhorn codes' mean row entropy
and mean row maximum, and how many prototypes are some sample's argmax; the score spread across
prototypes (per-row std) and over the batch (per-prototype std, i.e. whether embeddings differ);
the entropy of softmax(scores / T); the prototype row norms seen by the forward pass; whether the
prototypes had a gradient at the optimizer step; and the mean pairwise cosine of the embeddings.

``--init-signal`` instead measures, at initialisation on one batch, how much the two global crops
of an image share beyond what any two images share (embedding cosine, same image vs different
images), and whether the swapped prediction starts below ln K: above it, the codes tell the
prediction nothing yet and the steepest descent flattens the predictions (the collapse).

``--codes-of CHECKPOINT`` instead tells what a trained run's prototypes sort images by: the
agreement (NMI) of each image's favourite prototype with its class and with its dominant colour
channel, trained and at initialisation.
"""

import argparse
import copy
import io
import math

import numpy as np
import torch
from PIL import Image

import ssl_models.methods.swav as swav_module
from pipelines.config import Config, load_config
from pipelines.config_layers import parse_set
from pipelines.data.synthetic import generate_rows
from pipelines.data.views import ViewMaker
from pipelines.evaluate import knn_top1
from pipelines.train.step import TrainStep, build_method, place, prepare_views
from ssl_models.losses import sinkhorn


def entropy(p: torch.Tensor) -> torch.Tensor:
    """Mean row entropy (nats) of a (N, K) matrix of distributions."""
    return -(p * p.clamp_min(1e-30).log()).sum(1).mean()


def mean_pairwise_cosine(x: torch.Tensor) -> float:
    """Mean cosine similarity over all pairs of distinct rows of ``x`` (N, D)."""
    z = torch.nn.functional.normalize(x, dim=1)
    n = z.shape[0]
    return float((z @ z.T).fill_diagonal_(0).sum() / (n * (n - 1)))


def dominant_channel(cfg, images: torch.Tensor) -> torch.Tensor:
    """Normalised images (N, 3, H, W) -> the index of the largest mean colour channel (N,)."""
    mean = torch.tensor(cfg.views.mean).view(1, 3, 1, 1)
    std = torch.tensor(cfg.views.std).view(1, 3, 1, 1)
    return (images * std + mean).mean((2, 3)).argmax(1)


def fixed_batches(cfg, images: int, batch: int, seed: int) -> list[dict[str, torch.Tensor]]:
    rows = list(generate_rows(-(-images // 10), seed=0))[:images]
    maker = ViewMaker(cfg.views, seed=seed)
    out = []
    for start in range(0, images - batch + 1, batch):
        chunk = rows[start : start + batch]
        views = maker(
            {
                "image": np.array([r.image for r in chunk], dtype=object),
                "label": np.array([r.label for r in chunk]),
            }
        )
        out.append({k: torch.from_numpy(v) for k, v in views.items()})
    return out


def add_fixed_batch_args(ap: argparse.ArgumentParser, steps: int, images: int) -> None:
    """The options every fixed-batch diagnostic shares (``--every`` and ``--set`` excepted)."""
    ap.add_argument("--steps", type=int, default=steps)
    ap.add_argument("--images", type=int, default=images, help="fixed images, cut once into views")
    ap.add_argument("--batch", type=int, default=128, help="one worker's batch in the real run")
    ap.add_argument("--steps-per-epoch", type=int, default=23)
    ap.add_argument("--epochs", type=int, default=8, help="for the schedules' length")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--knn", action="store_true", help="kNN (2,000 train / 500 test images)")


def fixed_batch_training(cfg, args) -> tuple:
    """The product's method and ``TrainStep`` for ``cfg`` on CPU, with the schedules of the real
    run's steps per epoch, and the fixed batches they cycle through: (method, step_fn, batches)."""
    torch.manual_seed(cfg.train.seed)
    device = torch.device("cpu")
    method = place(build_method(cfg), cfg, device)
    total = args.steps_per_epoch * args.epochs
    step_fn = TrainStep(method, cfg, device, total, args.steps_per_epoch)
    return method, step_fn, fixed_batches(cfg, args.images, args.batch, args.seed)


def eval_images(cfg, per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Whole 32-pixel images of the embedded train (seed 0) or test (seed 1) split, normalised."""
    rows = list(generate_rows(per_class, seed=seed))
    x = torch.stack(
        [
            torch.from_numpy(np.asarray(Image.open(io.BytesIO(r.image)).convert("RGB")).copy())
            for r in rows
        ]
    )
    x = x.permute(0, 3, 1, 2).float().div(255)
    mean = torch.tensor(cfg.views.mean).view(1, 3, 1, 1)
    std = torch.tensor(cfg.views.std).view(1, 3, 1, 1)
    return (x - mean) / std, torch.tensor([r.label for r in rows])


@torch.no_grad()
def knn(encoder: torch.nn.Module, bank, query) -> float:
    """Weighted kNN top-1 (k=200, T=0.1) of the encoder's features, eval mode."""
    was = encoder.training
    encoder.eval()
    feats = [torch.cat([encoder(x) for x in d[0].split(256)]) for d in (bank, query)]
    encoder.train(was)
    return knn_top1(feats[0], bank[1], feats[1], query[1], 10)


@torch.no_grad()
def knn_recalibrated(encoder: torch.nn.Module, bank, query) -> float:
    """:func:`knn` after the BatchNorm running statistics are recomputed on the bank's whole
    32-pixel images (a copy of the encoder): tells features apart from statistics that the
    training crops of another size left in the running averages."""
    enc = copy.deepcopy(encoder)
    for m in enc.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the recalibration batches
    enc.train()
    for x in bank[0].split(256):
        enc(x)
    return knn(enc, bank, query)


@torch.no_grad()
def cross_crop_signal(
    z0: torch.Tensor, z1: torch.Tensor, s0: torch.Tensor, s1: torch.Tensor, a
) -> dict[str, float]:
    """z0, z1: (N, D) unit embeddings of two crops of the same N images; s0, s1: (N, K) their
    prototype scores; ``a`` the SwAV config. Mean cosine of an image's two crops and of two
    different images' crops, the swapped cross-entropy CE(sinkhorn(s0), softmax(s1 / T)) and how
    often crop 1's favourite prototype is crop 0's coded one."""
    n = z0.shape[0]
    q = sinkhorn(s0, a.epsilon, a.sinkhorn_iterations)
    log_p = torch.log_softmax(s1 / a.temperature, dim=1)
    return {
        "same_image_cos": float((z0 * z1).sum(1).mean()),
        "other_image_cos": float((z0 @ z1.T).fill_diagonal_(0).sum() / (n * (n - 1))),
        "swapped_ce": float(-(q * log_p).sum(1).mean()),
        "ln_k": math.log(s0.shape[1]),
        "argmax_agreement": float((q.argmax(1) == s1.argmax(1)).float().mean()),
    }


def report_final_knn(encoder: torch.nn.Module, bank, query, steps: int) -> None:
    """Print :func:`knn` after training, and again with BatchNorm recalibrated."""
    print(f"kNN top-1 after {steps} steps: {knn(encoder, bank, query):.3f}")
    recal = knn_recalibrated(encoder, bank, query)
    print(f"kNN top-1 after {steps} steps, BatchNorm recalibrated on 32 px: {recal:.3f}")


def nmi(a: list[int], b: list[int]) -> float:
    """Normalised mutual information (geometric mean of the entropies) of two labelings."""
    from collections import Counter

    n, ca, cb, cab = len(a), Counter(a), Counter(b), Counter(zip(a, b, strict=True))
    mi = sum(v / n * math.log(v * n / (ca[i] * cb[j])) for (i, j), v in cab.items())
    ha = -sum(v / n * math.log(v / n) for v in ca.values())
    hb = -sum(v / n * math.log(v / n) for v in cb.values())
    return mi / math.sqrt(ha * hb) if ha > 0 and hb > 0 else 0.0


def checkpoint_methods(path: str) -> tuple[dict, Config, dict[str, torch.nn.Module]]:
    """A run checkpoint's ``(state, config, {"initialisation": method, "trained": method})``: the
    method built with seed ``train.seed`` (the weights the run started from), and again with the
    checkpoint's weights; both in eval mode."""
    from pipelines.config import build_config
    from pipelines.train.checkpoint import load_state

    state = load_state(path)
    cfg = build_config(state["config"])
    methods = {}
    for name in ("initialisation", "trained"):
        torch.manual_seed(cfg.train.seed)
        methods[name] = build_method(cfg)
        if name == "trained":
            methods[name].load_state_dict(state["model"])
        methods[name].eval()
    return state, cfg, methods


@torch.no_grad()
def what_codes_follow(checkpoint: str) -> None:
    """Each of 2,000 whole training images' favourite prototype, for a trained checkpoint and for
    the same architecture at initialisation: its agreement (NMI) with the class and with the
    image's dominant colour channel."""
    _, cfg, methods = checkpoint_methods(checkpoint)
    x, y = eval_images(cfg, 200, 0)
    channel = dominant_channel(cfg, x).tolist()
    for name, method in methods.items():
        z = torch.nn.functional.normalize(method.projector(method.backbone(x)), dim=1)
        protos = torch.nn.functional.normalize(method.prototypes.weight, dim=1)
        fav = (z @ protos.T).argmax(1).tolist()
        print(
            f"{name}: {len(set(fav))} prototypes used; NMI with the class "
            f"{nmi(fav, y.tolist()):.3f}, with the dominant colour channel {nmi(fav, channel):.3f}"
        )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_fixed_batch_args(ap, steps=60, images=512)
    ap.add_argument("--codes-of", metavar="CHECKPOINT", help="only: what a run's codes follow")
    ap.add_argument(
        "--init-signal", action="store_true", help="only: cross-crop signal at initialisation"
    )
    ap.add_argument("--every", type=int, default=1, help="print every N-th step (and the last)")
    ap.add_argument("--set", nargs="*", default=[], help="config overrides KEY=VALUE")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    if args.codes_of:
        what_codes_follow(args.codes_of)
        return
    cfg = load_config("swav", overrides=parse_set(args.set))
    print(cfg.method_args)
    print(cfg.optim)
    method, step_fn, batches = fixed_batch_training(cfg, args)
    device = torch.device("cpu")
    a = cfg.method_args
    if args.init_signal:
        views = prepare_views(batches[0], cfg, device)["global"]  # (B, Vg, 3, S, S)
        b = views.shape[0]
        method.prototypes.normalize_()  # as on_step_start before the first step
        with torch.no_grad():
            crops = views[:, :2].transpose(0, 1).flatten(0, 1)  # (2B, 3, S, S), crop-major
            z = torch.nn.functional.normalize(method.projector(method.backbone(crops)), dim=1)
            s = method.prototypes(z)
        signal = cross_crop_signal(z[:b], z[b:], s[:b], s[b:], a)
        print(" ".join(f"{k} {v:.3f}" for k, v in signal.items()))
        return
    if args.knn:
        bank, query = eval_images(cfg, 200, 0), eval_images(cfg, 50, 1)
        print(f"kNN top-1 at initialisation: {knn(method.encoder, bank, query):.3f}", flush=True)

    seen: dict[str, torch.Tensor | list] = {}
    real_loss = swav_module.swav_loss

    def recording_loss(scores, *rest, **kw):
        seen["scores"] = [s.detach() for s in scores]
        return real_loss(scores, *rest, **kw)

    swav_module.swav_loss = recording_loss
    real_after = method.on_after_backward

    def recording_after(progress):
        real_after(progress)
        g = method.prototypes.weight.grad
        seen["proto_grad"] = 0.0 if g is None else float(g.norm())

    method.on_after_backward = recording_after
    real_forward = method.projector.forward

    def recording_projector(h):
        z = real_forward(h)
        seen["z"] = torch.nn.functional.normalize(z.detach(), dim=1)
        return z

    method.projector.forward = recording_projector

    print(
        "step    lr     loss  | code H  code max  used | s std/row  s std/batch  |s|max/eps"
        " | p H(T)  | proto |w| min-max  grad | z cos"
    )
    print(f"uniform entropy ln K = {math.log(a.num_prototypes):.4f}")
    for step in range(args.steps):
        result = step_fn(batches[step % len(batches)], step)
        if step % args.every and step != args.steps - 1:
            continue
        s0 = seen["scores"][0]
        q = sinkhorn(s0, a.epsilon, a.sinkhorn_iterations)
        used = int(q.argmax(1).unique().numel())
        p = torch.softmax(seen["scores"][1] / a.temperature, dim=1)
        # the norms the next forward pass will see (on_step_start normalises before it)
        w = method.prototypes.weight.detach()
        norms = w.norm(dim=1)
        cos = mean_pairwise_cosine(seen["z"][: args.batch])
        print(
            f"{step:4d} {result.metrics['lr']:.4f} {result.loss:.4f} | "
            f"{float(entropy(q)):.3f}  {float(q.max(1).values.mean()):.3f}  {used:4d} | "
            f"{float(s0.std(1).mean()):.4f}  {float(s0.std(0).mean()):.4f}  "
            f"{float(s0.abs().max()) / a.epsilon:7.2f} | {float(entropy(p)):.3f} | "
            f"{float(norms.min()):.3f}-{float(norms.max()):.3f}  {seen['proto_grad']:.2e} | "
            f"{cos:.3f}",
            flush=True,
        )

    if args.knn:
        report_final_knn(method.encoder, bank, query, args.steps)


if __name__ == "__main__":
    main()
