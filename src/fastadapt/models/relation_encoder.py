"""The embedding module of Relation Networks on Omniglot (Sung et al. 2018, arXiv:1711.06025, Fig. 2).

Four blocks of [3x3 convolution with ``hidden`` channels, BatchNorm, ReLU], the
first two followed by a 2x2 max-pool. It returns feature maps, not vectors: the
relation module compares them spatially. As in the authors' code
(floodsung/LearningToCompare_FSL) the first two convolutions are unpadded and the
last two padded, so 28x28 inputs give ``(hidden, 5, 5)`` feature maps.
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

from fastadapt.models.conv4 import BatchNormPolicy, batch_norm
from fastadapt.models.registry import register_model

PADDINGS = ("paper", "same")


@register_model("relation_encoder")
class RelationEncoder(nn.Module):
    """Relation Networks' Omniglot encoder.

    Args:
        in_channels: input channels (1 for Omniglot).
        hidden: channels of every block (64 in the paper).
        bn: BatchNorm policy, see ``fastadapt.models.conv4.batch_norm``. The paper's code
            never switches to ``eval()`` (its BatchNorm momentum is 1), i.e. ``"batch"``.
        padding: ``"paper"`` (blocks 1-2 unpadded, 3-4 padded by 1: 28x28 -> 5x5) or
            ``"same"`` (every convolution padded: 28x28 -> 7x7; keeps small inputs such
            as 16x16 -> 4x4 large enough for the relation module's two max-pools).

    Shapes:
        input ``(N, in_channels, H, W)``; output ``(N, hidden, h, w)`` with
        ``h = ((H - 2) // 2 - 2) // 2`` for ``"paper"`` and ``H // 4`` for ``"same"``.
    """

    def __init__(
        self,
        in_channels: int = 1,
        hidden: int = 64,
        bn: BatchNormPolicy = "batch",
        padding: Literal["paper", "same"] = "paper",
    ) -> None:
        super().__init__()
        if padding not in PADDINGS:
            raise ValueError(f"unknown padding {padding!r}; choose one of {PADDINGS}")
        if in_channels < 1 or hidden < 1:
            raise ValueError(f"in_channels and hidden must be positive, got {in_channels}, {hidden}")
        blocks: list[nn.Module] = []
        channels = in_channels
        for block in range(4):
            pad = 0 if padding == "paper" and block < 2 else 1
            blocks += [nn.Conv2d(channels, hidden, 3, padding=pad), batch_norm(hidden, bn), nn.ReLU()]
            if block < 2:
                blocks.append(nn.MaxPool2d(2))
            channels = hidden
        self.features = nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x)  # (N, hidden, h, w)
