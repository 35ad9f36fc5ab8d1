"""Conv-4, the standard few-shot backbone (Vinyals et al. 2016; Snell et al. 2017; Finn et al. 2017).

Four blocks of [3x3 convolution with ``hidden`` channels, BatchNorm, ReLU, 2x
down-sampling]. Down-sampling is a 2x2 max-pool (ProtoNets, Matching Nets, MAML
on miniImageNet) or a stride-2 convolution (MAML and Reptile on Omniglot). An
optional linear head maps the flattened features to ``out_features`` logits.
For 28x28 inputs the feature map is 1x1, so embeddings have ``hidden`` features.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from fastadapt.models.registry import register_model

BatchNormPolicy = Literal["batch", "running", "none"]
BN_POLICIES: tuple[str, ...] = ("batch", "running", "none")


def batch_norm(channels: int, policy: BatchNormPolicy) -> nn.Module:
    """A BatchNorm layer following ``policy``.

    ``"batch"``: always normalise with the current batch's statistics, also at test
    time (transductive; MAML-style papers), no running buffers. ``"running"``: batch
    statistics in training, running statistics in ``eval()`` mode (ProtoNets).
    ``"none"``: no normalisation.
    """
    if policy == "batch":
        return nn.BatchNorm2d(channels, track_running_stats=False)
    if policy == "running":
        return nn.BatchNorm2d(channels)
    if policy == "none":
        return nn.Identity()
    raise ValueError(f"unknown BatchNorm policy {policy!r}; choose one of {BN_POLICIES}")


@register_model("conv4")
class Conv4(nn.Module):
    """Conv-4 backbone.

    Args:
        in_channels: input channels (1 for Omniglot, 3 for miniImageNet).
        hidden: channels of every block (64 in the papers; 32 for MAML on miniImageNet).
        out_features: size of a linear head on the flattened features, or ``None``
            to return the features (metric learners).
        bn: BatchNorm policy, see ``batch_norm``.
        pool: ``"max"`` (conv stride 1 + 2x2 max-pool) or ``"stride"`` (stride-2 conv).
        image_size: input height/width, needed to size the head (28 for Omniglot).
        readout: ``"flatten"`` the final feature map, or average it over space (``"mean"``,
            global average pooling: MAML's Omniglot network).

    Shapes:
        input ``(N, in_channels, H, W)``; output ``(N, out_features)`` or ``(N, features)``.
    """

    def __init__(
        self,
        in_channels: int = 1,
        hidden: int = 64,
        out_features: int | None = None,
        bn: BatchNormPolicy = "batch",
        pool: Literal["max", "stride"] = "max",
        image_size: int = 28,
        readout: Literal["flatten", "mean"] = "flatten",
    ) -> None:
        super().__init__()
        if pool not in ("max", "stride"):
            raise ValueError(f"pool must be 'max' or 'stride', got {pool!r}")
        if readout not in ("flatten", "mean"):
            raise ValueError(f"readout must be 'flatten' or 'mean', got {readout!r}")
        if in_channels < 1 or hidden < 1 or image_size < 1:
            raise ValueError(
                f"in_channels, hidden and image_size must be positive, "
                f"got {in_channels}, {hidden}, {image_size}"
            )
        self.bn_policy, self.pool, self.readout = bn, pool, readout
        blocks: list[nn.Module] = []
        channels = in_channels
        for _ in range(4):
            stride = 2 if pool == "stride" else 1
            blocks += [
                nn.Conv2d(channels, hidden, 3, stride=stride, padding=1),
                batch_norm(hidden, bn),
                nn.ReLU(),
            ]
            if pool == "max":
                blocks.append(nn.MaxPool2d(2))
            channels = hidden
        self.features = nn.Sequential(*blocks)
        with torch.no_grad():
            probe = self.features.eval()(torch.zeros(1, in_channels, image_size, image_size))
        self.features.train()
        self.feature_dim = hidden if readout == "mean" else probe.numel()
        self.head = None if out_features is None else nn.Linear(self.feature_dim, out_features)

    def forward(self, x: Tensor) -> Tensor:
        z = self.features(x)  # (N, hidden, h, w)
        z = z.mean((2, 3)) if self.readout == "mean" else z.flatten(1)  # (N, features)
        return z if self.head is None else self.head(z)
