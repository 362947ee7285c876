"""Frozen-feature evaluation maths: weighted kNN and the linear probe, on feature tensors.

The kNN classifier is the weighted kNN of InstDisc (Wu et al. 2018, arXiv:1805.01978), as DINO's
``eval_knn.py`` computes it: cosine similarity of L2-normalised features, the k nearest training
features vote for their class with weight ``exp(sim / T)``. The defaults k = 200, T = 0.1 (also
``EvalConfig``'s) are the kNN monitor of the MoCo CIFAR-10 demo (facebookresearch/moco
colab/moco_cifar10_demo.ipynb, ``--knn-k 200 --knn-t 0.1``), which follows Wu et al.; DINO reports
k = 20, T = 0.07 (``eval_knn.py --nb_knn 10 20 100 200 --temperature 0.07``, 20 in its tables).
To score as DINO does: ``sslpipe eval knn --set eval.knn_k=20 --set eval.knn_temperature=0.07``.
The linear probe is MAE's (He et al. 2022, arXiv:2111.06377, appendix A.2): a batch norm without
affine parameters then a linear layer, trained with SGD on features computed once (no
augmentation). Only torch: the embedding pass that feeds them is ``frozen.py``.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn


@torch.no_grad()
def weighted_knn_predict(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
    chunk: int = 1024,
) -> torch.Tensor:
    """train_features: (N, D), train_labels: (N,), test_features: (M, D) -> predictions (M,)."""
    if train_features.shape[0] != train_labels.shape[0]:
        raise ValueError("train_features and train_labels differ in length")
    if train_features.shape[0] == 0:
        raise ValueError("kNN needs at least one training feature")
    train = F.normalize(train_features.float(), dim=1)
    test = F.normalize(test_features.float(), dim=1)
    k = min(k, train.shape[0])
    preds = []
    for start in range(0, test.shape[0], chunk):
        sim = test[start : start + chunk] @ train.T  # (m, N)
        top_sim, top_idx = sim.topk(k, dim=1)  # (m, k)
        weights = (top_sim / temperature).exp()
        votes = torch.zeros(sim.shape[0], num_classes, device=sim.device)
        votes.scatter_add_(1, train_labels[top_idx], weights)  # (m, C)
        preds.append(votes.argmax(1))
    return torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long)


def knn_top1(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
) -> float:
    preds = weighted_knn_predict(
        train_features, train_labels, test_features, num_classes, k, temperature
    )
    return float((preds == test_labels).float().mean()) if len(test_labels) else float("nan")


def linear_probe_top1(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
    epochs: int = 100,
    lr: float = 0.1,
    weight_decay: float = 0.0,
    batch_size: int = 256,
    seed: int = 0,
) -> float:
    """Top-1 on the test features of a linear classifier trained on the train features.

    train_features: (N, D), labels (N,) in [0, num_classes); test likewise. SGD, momentum 0.9,
    cosine lr over ``epochs``; reproducible from ``seed``.
    """
    if len(train_labels) == 0 or len(test_labels) == 0:
        raise ValueError("the linear probe needs labeled train and test features")
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    head = nn.Sequential(
        nn.BatchNorm1d(train_features.shape[1], affine=False),
        nn.Linear(train_features.shape[1], num_classes),
    )
    nn.init.trunc_normal_(head[1].weight, std=0.01)
    nn.init.zeros_(head[1].bias)
    opt = torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    x, y = train_features.float(), train_labels.long()
    steps_per_epoch = math.ceil(len(y) / batch_size)
    total, step = epochs * steps_per_epoch, 0
    head.train()
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=g)
        for i in range(0, len(y), batch_size):
            idx = order[i : i + batch_size]
            if len(idx) < 2:  # batch norm needs two rows in training mode
                continue
            for group in opt.param_groups:
                group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / total))
            loss = F.cross_entropy(head(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
    head.eval()
    with torch.no_grad():
        preds = head(test_features.float()).argmax(1)
    return float((preds == test_labels).float().mean())
