"""BEiT (Bao et al. 2022, arXiv:2106.08254): blockwise-mask ~40% of the patches with a mask
token, predict the visual tokens of the masked patches with a linear head, cross-entropy.

The tokens come from a tokenizer this project fits itself (``ssl_models.tokenizer``), in place of
the DALL-E dVAE the paper downloads.
"""

from dataclasses import dataclass, field

import torch
from torch import nn

from ssl_models.backbones.masking import block_masking, step_generator
from ssl_models.losses import beit_loss
from ssl_models.methods.base import Progress, SSLMethod
from ssl_models.methods.single_view import require_vit, single_view, vit_no_weight_decay
from ssl_models.tokenizer import KMeansTokenizer, TokenizerConfig, tokenizer_for


@dataclass(frozen=True)
class BEiTConfig:
    mask_ratio: float = 0.3827  # 75 of 196 patches, the reference's --num_mask_patches ("~40%")
    min_block_patches: int = 16  # smallest masked block (reference default, on a 14x14 grid)
    min_aspect: float = 0.3  # block aspect ratio in [0.3, 1/0.3]
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)


class BEiT(SSLMethod):
    """batch["global"]: (B, 1, 3, H, W) -> {loss, token_accuracy}."""

    def __init__(
        self, backbone: nn.Module, cfg: BEiTConfig, tokenizer: KMeansTokenizer | None = None
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = require_vit(backbone, "beit")
        # the reference's no_weight_decay(): the [CLS] token and an absolute position table; the
        # relative position bias table and the mask token decay
        self.no_weight_decay = vit_no_weight_decay(self.backbone, relative_table=False)
        self.backbone.enable_mask_token()
        p = self.backbone.patch_size
        self.tokenizer = tokenizer or tokenizer_for(cfg.tokenizer, p, "beit")
        self.lm_head = nn.Linear(self.backbone.dim, self.tokenizer.codebook_size)
        nn.init.trunc_normal_(self.lm_head.weight, std=0.02)
        nn.init.zeros_(self.lm_head.bias)
        # identical on every rank and never trained: DDP need not broadcast it every step
        self._ddp_params_and_buffers_to_ignore = ["tokenizer.codebook"]
        self.seed = torch.initial_seed()
        self.rng = step_generator(self.seed, 0)

    def on_step_start(self, progress: Progress) -> dict[str, float]:
        self.rng = step_generator(self.seed, progress.step)
        return {}

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        images = single_view(batch, "beit")
        grid = self.backbone.grid_of(images)
        length = grid[0] * grid[1]
        num_masked = round(self.cfg.mask_ratio * length)
        mask = block_masking(
            images.shape[0],
            grid,
            num_masked,
            min_block=self.cfg.min_block_patches,
            min_aspect=self.cfg.min_aspect,
            generator=self.rng,
        ).to(images.device)  # (B, L)
        codes = self.tokenizer.encode(images)  # (B, L)
        tokens = self.backbone.forward_tokens(images, mask=mask)[:, 1:]  # (B, L, D)
        logits = self.lm_head(tokens[mask])  # (M, K), the masked patches only
        targets = codes[mask]
        loss = beit_loss(logits, targets)
        accuracy = (logits.detach().argmax(1) == targets).float().mean()
        return {"loss": loss, "token_accuracy": accuracy}
