"""Training-time monitors: the online linear probe (every step) and the kNN monitor (every K
epochs). Neither imports Ray; the kNN monitor only iterates the datasets it is handed.

The probe sees features the method already computed (``outputs["features"]``) or a separate
eval-mode, no-grad forward of the first view: either way nothing flows back into the encoder and
batch-norm running statistics do not move, so switching the probe on does not change training.
"""

import torch
import torch.nn.functional as F
from torch import nn

from ssl_models import distributed


class OnlineProbe:
    """A linear classifier trained on detached features with its own SGD (solo-learn's online
    classifier). With several workers its gradients are averaged, so every rank holds the same
    probe."""

    def __init__(self, dim: int, num_classes: int, lr: float, device: torch.device) -> None:
        if num_classes < 2:
            raise ValueError(f"the online probe needs labeled data (2+ classes), got {num_classes}")
        self.linear = nn.Linear(dim, num_classes).to(device)
        self.optimizer = torch.optim.SGD(self.linear.parameters(), lr=lr, momentum=0.9)

    def step(self, features: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        """features: (B, D) detached; labels: (B,), -1 = unknown. Returns the batch's top-1
        before this update and the loss."""
        keep = labels >= 0
        features, labels = features.detach().float()[keep], labels[keep]
        # a rank whose batch is unlabeled still joins the gradient all-reduce below
        logits = self.linear(features)  # (B', C)
        loss = F.cross_entropy(logits, labels) if len(labels) else logits.sum() * 0.0
        self.optimizer.zero_grad(set_to_none=False)
        loss.backward()
        for p in self.linear.parameters():
            if distributed.is_distributed():
                torch.distributed.all_reduce(p.grad)
                p.grad /= distributed.world_size()
        self.optimizer.step()
        top1 = (logits.argmax(1) == labels).float().mean().item() if len(labels) else float("nan")
        return {"probe_loss": loss.item(), "probe_top1": top1}

    def state_dict(self) -> dict:
        return {"linear": self.linear.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.linear.load_state_dict(state["linear"])
        self.optimizer.load_state_dict(state["optimizer"])


@torch.no_grad()
def probe_features(encoder: nn.Module, views: torch.Tensor) -> torch.Tensor:
    """views: (B, V, 3, S, S) normalised -> (B, D) features of view 0, eval mode, no grad."""
    was_training = encoder.training
    encoder.eval()
    try:
        return encoder(views[:, 0]).float()
    finally:
        encoder.train(was_training)


class KnnMonitor:
    """Weighted kNN top-1 (k, T as ``eval``) of the current encoder on a fixed labeled subset.

    Runs on rank 0 only: the encoder is called outside DDP in eval mode, which makes no
    collective call, so the other ranks simply wait at the next ``ray.train.report`` (they never
    sit in a collective rank 0 skips).
    """

    def __init__(
        self,
        bank,
        queries,
        num_classes: int,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
        k: int,
        temperature: float,
        batch_size: int,
        device: torch.device,
    ) -> None:
        self.bank, self.queries = bank, queries
        self.num_classes, self.k, self.temperature = num_classes, k, temperature
        self.batch_size, self.device = batch_size, device
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1)

    @torch.no_grad()
    def _features(self, encoder: nn.Module, ds) -> tuple[torch.Tensor, torch.Tensor]:
        feats, labels = [], []
        for batch in ds.iter_torch_batches(batch_size=self.batch_size):
            x = batch["image"].to(self.device).float().div_(255)  # (B, 3, S, S)
            feats.append(encoder((x - self.mean) / self.std).float().cpu())
            labels.append(batch["label"].cpu())
        if not labels:
            raise ValueError("the kNN monitor's subset is empty")
        return torch.cat(feats), torch.cat(labels)

    def __call__(self, encoder: nn.Module) -> float:
        from pipelines.eval.probes import knn_top1

        was_training = encoder.training
        encoder.eval()
        try:
            bank, bank_labels = self._features(encoder, self.bank)
            queries, query_labels = self._features(encoder, self.queries)
        finally:
            encoder.train(was_training)
        return knn_top1(
            bank, bank_labels, queries, query_labels, self.num_classes, self.k, self.temperature
        )
