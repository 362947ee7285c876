"""What each ViT position scheme costs per training step, side by side in one process.

The shared relative position bias (``pos_embed: relative``, SimMIM's and BEiT's recipes) adds a
(heads, 1 + L, 1 + L) bias to every block's attention logits, which also moves scaled dot-product
attention off the kernels that take no mask. This times a forward and backward pass of the
SimMIM path (mask tokens, 60 % masked) for each scheme in interleaved rounds, so drift in the
machine's speed falls on all of them alike, and prints the median per scheme and the median of
its per-round ratios to the sin-cos table.

    env PYTHONPATH=$PWD .venv/bin/python -m benchmarks.vit_position_cost            # laptop ViT
    python -m benchmarks.vit_position_cost --size vit_base --image 224 --patch 16 \
        --batch 64 --device cuda                                                    # a GPU
"""

import argparse
import statistics
import time

import torch

from ssl_models.backbones import build_backbone

SCHEMES = ("sincos", "learned", "relative")


def step_seconds(model: torch.nn.Module, x: torch.Tensor, mask: torch.Tensor, steps: int) -> float:
    """Mean seconds of one forward and backward pass over ``steps`` passes."""
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=x.is_cuda):
            model.forward_tokens(x, mask=mask).float().pow(2).mean().backward()
    sync()
    return (time.perf_counter() - start) / steps


def measure(args: argparse.Namespace) -> dict[str, list[float]]:
    device = torch.device(args.device)
    models = {}
    for kind in SCHEMES:
        torch.manual_seed(0)
        model = build_backbone(
            args.size,
            image_size=args.image,
            patch_size=args.patch,
            dim=args.dim,
            depth=args.depth,
            heads=args.heads,
            pos_embed=kind,
        ).to(device)
        model.enable_mask_token()
        models[kind] = model
    grid = args.image // args.patch
    x = torch.randn(args.batch, 3, args.image, args.image, device=device)
    mask = torch.rand(args.batch, grid * grid, device=device) < 0.6
    for model in models.values():  # warm-up: allocator, kernels
        step_seconds(model, x, mask, 2)
    times: dict[str, list[float]] = {kind: [] for kind in SCHEMES}
    for _ in range(args.rounds):
        for kind, model in models.items():
            times[kind].append(step_seconds(model, x, mask, args.steps))
    return times


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="vit_tiny")
    parser.add_argument("--image", type=int, default=32)
    parser.add_argument("--patch", type=int, default=4)
    parser.add_argument("--dim", type=int, default=80, help="0: the size's own (the profile: 80)")
    parser.add_argument("--depth", type=int, default=4, help="0: the size's own")
    parser.add_argument("--heads", type=int, default=4, help="0: the size's own")
    parser.add_argument("--batch", type=int, default=128, help="one worker's batch")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=5, help="passes per scheme per round")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (a Ray worker's 1)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    times = measure(args)
    for kind in SCHEMES:
        median = statistics.median(times[kind])
        # paired: each round's time over the same round's sin-cos time
        ratio = statistics.median(t / b for t, b in zip(times[kind], times["sincos"], strict=True))
        spread = f"{min(times[kind]) * 1e3:.0f}-{max(times[kind]) * 1e3:.0f}"
        print(f"{kind:9s} {median * 1e3:7.1f} ms/step (rounds {spread})  ×{ratio:.2f} sin-cos")


if __name__ == "__main__":
    main()
