"""DINO's training dynamics on a few fixed batches of the embedded dataset, in one process.

    env PYTHONPATH=$PWD .venv/bin/python -m benchmarks.dino_diagnostics --steps 92 --epochs 4 \\
        --images 2048 --knn --every 10 [--set method_args.teacher_temp=0.04 ...]

The set-up of ``benchmarks/swav_diagnostics.py`` (whose helpers it uses): no Ray, the config
``sslpipe pretrain --method dino`` builds (recipe + laptop profile + ``--set``), the product's
method and ``TrainStep``, views cut once by the product's ``ViewMaker`` from ``--images``
embedded training images, the real run's steps per epoch for the schedules (lr warm-up,
teacher temperature, last-layer freeze, EMA cosine) while the batches cycle.

Per step it prints what tells DINO's two collapses apart (paper §5.3, Fig. 7): the loss; the
teacher temperature; the entropy of the teacher's targets softmax((t − c)/τ), per row (ln K when
they are uniform, near 0 when one-hot) and of their batch mean (near 0 when every sample gets
the same one-hot target, ln K when the targets are varied or uniform); the entropy of the
student's softmax(s / 0.1); the KL divergence of the targets from the student (the part of
the loss that is not the targets' own entropy); the centre's norm and its spread over the K
dimensions; the teacher's raw outputs' spread over the batch (per-dimension std) and over the
dimensions (per-row std); the mean pairwise cosine, over one global crop, of the teacher's and
the student's backbone features (the teacher's is the exported encoder) and of their heads'
bottlenecks (the MLP output the last layer sees, once normalised); the last layer's gradient
norm at the optimizer step.
"""

import argparse
import math

import torch
import torch.nn.functional as F

import ssl_models.methods.dino as dino_module
from benchmarks.swav_diagnostics import (
    add_fixed_batch_args,
    entropy,
    eval_images,
    fixed_batch_training,
    knn,
    mean_pairwise_cosine,
    report_final_knn,
)
from pipelines.config import load_config
from pipelines.config_layers import parse_set


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_fixed_batch_args(ap, steps=92, images=2048)
    ap.add_argument("--every", type=int, default=1, help="print every N-th step (and the last)")
    ap.add_argument("--set", nargs="*", default=[], help="config overrides KEY=VALUE")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    cfg = load_config("dino", overrides=parse_set(args.set))
    print(cfg.method_args)
    print(cfg.optim)
    print({k: (g.count, g.size, g.scale) for k, g in cfg.views.groups.items()})
    method, step_fn, batches = fixed_batch_training(cfg, args)
    a = cfg.method_args
    if args.knn:
        bank, query = eval_images(cfg, 200, 0), eval_images(cfg, 50, 1)
        print(f"kNN top-1 at initialisation: {knn(method.encoder, bank, query):.3f}", flush=True)

    seen: dict[str, object] = {}
    real_loss = dino_module.dino_loss

    def recording_loss(student, teacher, center, student_temp, teacher_temp):
        seen["student"] = [s.detach() for s in student]
        seen["teacher"] = [t.detach() for t in teacher]
        seen["center"] = center.detach().clone()
        return real_loss(student, teacher, center, student_temp, teacher_temp)

    dino_module.dino_loss = recording_loss
    real_from_targets = dino_module.dino_loss_from_targets

    def recording_from_targets(student, targets, student_temp):  # centering: sinkhorn_knopp
        seen["student"] = [s.detach() for s in student]
        seen["targets"] = [t.detach() for t in targets]
        seen["center"] = method.center.center.detach().clone()
        return real_from_targets(student, targets, student_temp)

    dino_module.dino_loss_from_targets = recording_from_targets
    method.teacher_head.register_forward_hook(
        lambda m, i, o: seen.__setitem__("teacher", list(o.detach().chunk(2)))
    )
    real_after = method.on_after_backward

    def recording_after(progress):
        real_after(progress)
        grads = [p.grad for p in method.head.last_layer.parameters() if p.grad is not None]
        seen["last_grad"] = sum(float(g.norm()) ** 2 for g in grads) ** 0.5

    method.on_after_backward = recording_after
    real_teacher = method.teacher_backbone.forward

    def recording_teacher(x):
        h = real_teacher(x)
        seen["features"] = h.detach()
        return h

    method.teacher_backbone.forward = recording_teacher
    real_student = method.backbone.forward

    def recording_student(x):
        h = real_student(x)
        seen.setdefault("student_features", h.detach())  # the first call: the global crops
        return h

    method.backbone.forward = recording_student
    # the heads' MLP outputs: the bottleneck before its L2 normalisation
    method.teacher_head.mlp.register_forward_hook(
        lambda m, i, o: seen.__setitem__("teacher_bottleneck", o.detach())
    )
    method.head.mlp.register_forward_hook(
        lambda m, i, o: seen.__setitem__("student_bottleneck", o.detach())
    )

    print(f"uniform entropy ln K = {math.log(a.out_dim):.4f}")
    print(
        "step    lr    τ_t    loss  | tgt H  tgt max  H(mean tgt) | stu H   KL  | "
        "|c|    c std | t std/batch  t std/dim | cos: t feat  s feat  t bottl  s bottl | "
        "last-layer grad"
    )
    for step in range(args.steps):
        seen.pop("student_features", None)
        result = step_fn(batches[step % len(batches)], step)
        if step % args.every and step != args.steps - 1:
            continue
        t0, s1 = seen["teacher"][0], seen["student"][1]
        c = seen["center"].reshape(1, -1)
        tau = result.metrics["teacher_temp"]
        # targets of global crop 0: Sinkhorn-Knopp codes, or the centred softmax
        q = seen["targets"][0] if "targets" in seen else F.softmax((t0 - c) / tau, dim=1)
        p = F.softmax(s1 / a.student_temp, dim=1)  # the student on the other global crop
        kl = float((q * (q.clamp_min(1e-30).log() - p.clamp_min(1e-30).log())).sum(1).mean())
        feats = seen["features"][: args.batch]  # teacher backbone, global crop 0
        print(
            f"{step:4d} {result.metrics['lr']:.4f} {tau:.4f} {result.loss:.4f} | "
            f"{float(entropy(q)):.3f}  {float(q.max(1).values.mean()):.3f}  "
            f"{float(entropy(q.mean(0, keepdim=True))):.3f} | "
            f"{float(entropy(p)):.3f}  {kl:.3f} | "
            f"{float(c.norm()):.3f}  {float(c.std()):.4f} | "
            f"{float(t0.std(0).mean()):.4f}  {float(t0.std(1).mean()):.4f} | "
            f"{mean_pairwise_cosine(feats):.3f}  "
            f"{mean_pairwise_cosine(seen['student_features'][: args.batch]):.3f}  "
            f"{mean_pairwise_cosine(seen['teacher_bottleneck'][: args.batch]):.3f}  "
            f"{mean_pairwise_cosine(seen['student_bottleneck'][: args.batch]):.3f} | "
            f"{seen['last_grad']:.2e}",
            flush=True,
        )

    if args.knn:
        report_final_knn(method.encoder, bank, query, args.steps)


if __name__ == "__main__":
    main()
