"""Masked image modeling losses: MAE, SimMIM, BEiT and CAE.

Each is a mean over the masked patches (or pixels) of the local batch, as the reference code
computes it per GPU; DDP's gradient averaging then gives the mean of the per-worker means (equal to
the global mean whenever every worker masks the same number of patches, as MAE and CAE do).
"""

import torch
import torch.nn.functional as F


def _check_patches(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, name: str) -> None:
    if pred.ndim != 3 or pred.shape != target.shape:
        raise ValueError(
            f"{name}: pred and target must be (N, L, P) of the same shape, got "
            f"{tuple(pred.shape)} and {tuple(target.shape)}"
        )
    if mask.shape != pred.shape[:2]:
        raise ValueError(
            f"{name}: mask must be (N, L) = {tuple(pred.shape[:2])}, got {tuple(mask.shape)}"
        )


def mae_loss(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, norm_pix: bool = True
) -> torch.Tensor:
    """MAE's reconstruction loss (He et al. 2022, arXiv:2111.06377; ``models_mae.forward_loss``).

    pred, target: (N, L, P) patches (P = p·p·3 pixels); mask: (N, L), 1 = masked.
    With ``norm_pix`` each target patch is normalised by its own mean and unbiased variance over
    its P values: ``(t - mean) / sqrt(var + 1e-6)``. Returns the mean over masked patches of the
    per-patch mean squared error; visible patches do not count.
    """
    _check_patches(pred, target, mask, "mae_loss")
    if norm_pix:
        if target.shape[-1] < 2:
            raise ValueError("mae_loss: norm_pix needs at least 2 values per patch")
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)  # unbiased, as torch.Tensor.var in the reference
        target = (target - mean) / (var + 1.0e-6) ** 0.5
    per_patch = ((pred - target) ** 2).mean(dim=-1)  # (N, L)
    mask = mask.to(per_patch.dtype)
    masked = mask.sum()
    if masked == 0:
        raise ValueError("mae_loss: no masked patch; the loss counts masked patches only")
    return (per_patch * mask).sum() / masked


def simmim_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """SimMIM's L1 loss on masked pixels (Xie et al. 2022, arXiv:2111.09886; ``models/simmim.py``).

    pred, target: (N, C, H, W) images (the normalised input is the target); mask: (N, H, W),
    1 = masked pixel. Returns ``sum(|pred - target| · mask) / (sum(mask) + 1e-5) / C``: the mean
    absolute error over masked pixels and channels.
    """
    if pred.ndim != 4 or pred.shape != target.shape:
        raise ValueError(
            f"simmim_loss: pred and target must be (N, C, H, W) of the same shape, got "
            f"{tuple(pred.shape)} and {tuple(target.shape)}"
        )
    n, c, h, w = pred.shape
    if mask.shape != (n, h, w):
        raise ValueError(
            f"simmim_loss: mask must be (N, H, W) = {(n, h, w)}, got {tuple(mask.shape)}"
        )
    mask = mask.to(pred.dtype).unsqueeze(1)  # (N, 1, H, W)
    if mask.sum() == 0:
        raise ValueError("simmim_loss: no masked pixel; the loss counts masked pixels only")
    l1 = F.l1_loss(pred, target, reduction="none")
    return (l1 * mask).sum() / (mask.sum() + 1.0e-5) / c


def beit_loss(logits: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """BEiT's masked image modeling loss (Bao et al. 2022, arXiv:2106.08254; reference
    ``engine_for_pretraining``): cross-entropy of the predicted visual tokens.

    logits: (M, K) for the M masked patches of the batch; codes: (M,) their tokens in [0, K).
    Returns the mean over the M patches.
    """
    if logits.ndim != 2 or codes.shape != logits.shape[:1]:
        raise ValueError(
            f"beit_loss: expected logits (M, K) and codes (M,), got {tuple(logits.shape)} and "
            f"{tuple(codes.shape)}"
        )
    if logits.shape[0] == 0:
        raise ValueError("beit_loss: no masked patch to predict")
    if codes.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"beit_loss: codes must be integer token ids, got {codes.dtype}")
    if int(codes.min()) < 0 or int(codes.max()) >= logits.shape[1]:
        raise ValueError(f"beit_loss: codes outside [0, {logits.shape[1]})")
    return F.cross_entropy(logits.float(), codes.long())


def cae_alignment_loss(latent_pred: torch.Tensor, latent_target: torch.Tensor) -> torch.Tensor:
    """CAE's alignment term (Chen et al. 2023, arXiv:2202.03026): mean squared error between the
    regressor's masked-patch representations and the encoder's own, the latter without gradient.

    latent_pred, latent_target: (N, M, D). Returns the mean over all N·M·D values.
    """
    if latent_pred.shape != latent_target.shape:
        raise ValueError(
            f"cae_alignment_loss: shapes differ: {tuple(latent_pred.shape)} and "
            f"{tuple(latent_target.shape)}"
        )
    return F.mse_loss(latent_pred.float(), latent_target.detach().float())


def cae_loss(
    logits: torch.Tensor,
    codes: torch.Tensor,
    latent_pred: torch.Tensor,
    latent_target: torch.Tensor,
    align_weight: float = 2.0,
) -> torch.Tensor:
    """CAE's loss (Chen et al. 2023, arXiv:2202.03026, eq. 4; reference ``--align_loss_weight 2``):
    token cross-entropy of the decoder over masked patches + λ · alignment.

    logits: (M, K) and codes: (M,) as :func:`beit_loss`; latent_pred, latent_target: (N, M', D)
    as :func:`cae_alignment_loss`; align_weight: λ (2 in the paper).
    """
    return beit_loss(logits, codes) + align_weight * cae_alignment_loss(latent_pred, latent_target)
