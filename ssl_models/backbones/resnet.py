"""ResNet backbones (He et al. 2016, arXiv:1512.03385) from torchvision's residual blocks.

Two additions to torchvision's model: a CIFAR stem (3×3 stride-1 conv, no max-pool) for 32-pixel
images, and a width multiplier on every stage so the same architecture fits a CPU budget.
No pretrained weights are ever loaded.

torchvision is imported when a ResNet is built, not with this module: importing it costs a
second or more of CPU (all its models and ops), which a process that only reads configs (the
driver before Ray starts) or builds a ViT need not pay.
"""

from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from torchvision.models.resnet import BasicBlock, Bottleneck

_LAYOUTS: dict[str, tuple[str, tuple[int, int, int, int]]] = {
    "resnet18": ("BasicBlock", (2, 2, 2, 2)),
    "resnet34": ("BasicBlock", (3, 4, 6, 3)),
    "resnet50": ("Bottleneck", (3, 4, 6, 3)),
}


def residual_blocks() -> "tuple[type[BasicBlock], type[Bottleneck]]":
    """torchvision's two residual blocks (imports torchvision on first use)."""
    from torchvision.models.resnet import BasicBlock, Bottleneck

    return BasicBlock, Bottleneck


class ResNet(nn.Module):
    """Residual network without its classifier: ``(B, 3, H, W) -> (B, out_dim)``.

    ``cifar_stem``: a 3×3 conv of stride ``stem_stride`` and no max-pool instead of the 7×7
    stride-2 conv plus max-pool.
    """

    def __init__(
        self,
        block: "type[BasicBlock] | type[Bottleneck]",
        layers: tuple[int, int, int, int],
        width: float = 1.0,
        cifar_stem: bool = False,
        stem_stride: int = 1,
        zero_init_residual: bool = True,
    ) -> None:
        super().__init__()
        widths = [max(8, round(64 * width * 2**i)) for i in range(4)]
        self.inplanes = widths[0]
        if cifar_stem:
            # Small images lose too much to a stride-4 stem (SimCLR paper, appendix B.9);
            # stem_stride=2 is the middle ground, 4× cheaper than stride 1 at the same input.
            self.stem = nn.Sequential(
                nn.Conv2d(3, widths[0], 3, stride=stem_stride, padding=1, bias=False),
                nn.BatchNorm2d(widths[0]),
                nn.ReLU(inplace=True),
            )
        else:
            self.stem = nn.Sequential(
                nn.Conv2d(3, widths[0], 7, stride=2, padding=3, bias=False),
                nn.BatchNorm2d(widths[0]),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(3, stride=2, padding=1),
            )
        self.layer1 = self._make_layer(block, widths[0], layers[0], stride=1)
        self.layer2 = self._make_layer(block, widths[1], layers[1], stride=2)
        self.layer3 = self._make_layer(block, widths[2], layers[2], stride=2)
        self.layer4 = self._make_layer(block, widths[3], layers[3], stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.out_dim = widths[3] * block.expansion

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            # Each block starts as the identity (Goyal et al. 2017), as torchvision offers.
            BasicBlock, Bottleneck = residual_blocks()
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)
                elif isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def _make_layer(
        self, block: "type[BasicBlock] | type[Bottleneck]", planes: int, blocks: int, stride: int
    ) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 3, H, W) -> feature map (B, C, H', W')."""
        x = self.stem(x)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 3, H, W) -> pooled features (B, out_dim)."""
        return torch.flatten(self.pool(self.forward_features(x)), 1)


def resnet(
    name: str,
    width: float = 1.0,
    cifar_stem: bool = False,
    stem_stride: int = 1,
    zero_init_residual: bool = True,
) -> ResNet:
    block_name, layers = _LAYOUTS[name]
    basic, bottleneck = residual_blocks()
    block = {"BasicBlock": basic, "Bottleneck": bottleneck}[block_name]
    return ResNet(
        block,
        layers,
        width=width,
        cifar_stem=cifar_stem,
        stem_stride=stem_stride,
        zero_init_residual=zero_init_residual,
    )
