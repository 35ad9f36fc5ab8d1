"""Relation Networks (Sung, Yang, Zhang, Xiang, Torr & Hospedales 2018, arXiv:1711.06025).

An embedding module maps every image to a feature map; a class is represented by
the sum of its support feature maps. A learned relation module scores each
(class, query) pair from their concatenated feature maps: two [3x3 convolution,
BatchNorm, ReLU, 2x2 max-pool] blocks, then FC -> ReLU -> FC -> sigmoid. Training
regresses the scores onto the one-hot labels with a mean squared error (the
paper's choice) or, as an option, applies a cross-entropy to them.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastadapt.algorithms.base import MetaOutput, infer_ways, register_algorithm
from fastadapt.functional import class_sums, embed_episodes
from fastadapt.tasks.spec import EpisodeBatch

LOSSES = ("mse", "cross_entropy")
BN_POLICIES = ("batch", "running", "none")


def relation_block(in_channels: int, out_channels: int, bn: str) -> nn.Sequential:
    """[3x3 convolution (padded), BatchNorm per ``bn``, ReLU, 2x2 max-pool]: ``(N, C, h, w) -> (N, C', h//2, w//2)``."""
    if bn == "none":
        norm: nn.Module = nn.Identity()
    else:  # "batch": batch statistics also in eval(); "running": running statistics in eval()
        norm = nn.BatchNorm2d(out_channels, track_running_stats=bn == "running")
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1), norm, nn.ReLU(), nn.MaxPool2d(2))


def feature_shape(backbone: nn.Module, in_channels: int, image_size: int) -> tuple[int, ...]:
    """Shape of the backbone's output for one ``(in_channels, image_size, image_size)`` image.

    Probes two zero images in ``eval()`` mode without gradients, then restores every
    submodule's mode, so running statistics are left untouched.
    """
    modes = [(module, module.training) for module in backbone.modules()]
    parameter = next(backbone.parameters(), None)
    device = None if parameter is None else parameter.device
    try:
        with torch.no_grad():
            out = backbone.eval()(torch.zeros(2, in_channels, image_size, image_size, device=device))
    finally:
        for module, training in modes:
            module.training = training
    return tuple(out.shape[1:])


@register_algorithm("relation")
class RelationNet(nn.Module):
    """Relation Networks around a backbone returning feature maps.

    ``meta_loss`` and ``predict`` return the relation scores' **log-odds**
    ``s`` ``(B, Q, ways)``: ``torch.sigmoid(s)`` are the paper's relation scores in
    ``(0, 1)``, and the argmax is the prediction. ``loss="cross_entropy"`` uses ``s``
    as softmax logits.

    Args:
        backbone: maps ``(N, in_channels, H, W)`` to feature maps ``(N, C, h, w)``
            with ``h, w >= 4`` (e.g. ``relation_encoder``: 64x5x5 at 28x28).
        image_size: input side ``H = W``, used once to probe the backbone's output shape.
        in_channels: input channels (1 for Omniglot), for the same probe.
        relation_channels: channels of the relation module's convolutions (64 in the paper).
        relation_dim: hidden units of its first fully connected layer (8 in the paper).
        loss: ``"mse"`` between the scores and the one-hot labels (paper), or
            ``"cross_entropy"`` over the log-odds.
        bn: the relation module's BatchNorm policy (``"batch"``: batch statistics, also
            in ``eval()``, as the paper's code; ``"running"``; ``"none"``).
    """

    def __init__(
        self,
        backbone: nn.Module,
        image_size: int = 28,
        in_channels: int = 1,
        relation_channels: int = 64,
        relation_dim: int = 8,
        loss: Literal["mse", "cross_entropy"] = "mse",
        bn: Literal["batch", "running", "none"] = "batch",
    ) -> None:
        super().__init__()
        if loss not in LOSSES:
            raise ValueError(f"unknown loss {loss!r}; choose one of {LOSSES}")
        if bn not in BN_POLICIES:
            raise ValueError(f"unknown BatchNorm policy {bn!r}; choose one of {BN_POLICIES}")
        sizes = {"image_size": image_size, "in_channels": in_channels,
                 "relation_channels": relation_channels, "relation_dim": relation_dim}
        if any(v < 1 for v in sizes.values()):
            raise ValueError(f"sizes must be positive, got {sizes}")
        shape = feature_shape(backbone, in_channels, image_size)
        if len(shape) != 3 or min(shape[1:]) < 4:
            raise ValueError(
                f"relation needs a backbone returning feature maps (N, C, h, w) with h, w >= 4 (two 2x2 "
                f"max-pools follow), e.g. 'relation_encoder'; got (N, {', '.join(map(str, shape))}) for "
                f"{in_channels}x{image_size}x{image_size} inputs"
            )
        channels, height, width = shape
        self.backbone, self.loss = backbone, loss
        self.relation_convs = nn.Sequential(
            relation_block(2 * channels, relation_channels, bn), relation_block(relation_channels, relation_channels, bn)
        )
        flat = relation_channels * (height // 4) * (width // 4)
        self.relation_head = nn.Sequential(nn.Linear(flat, relation_dim), nn.ReLU(), nn.Linear(relation_dim, 1))

    def relation_logits(self, support_x: Tensor, support_y: Tensor, query_x: Tensor, ways: int) -> Tensor:
        """``(B, N_q, ways)`` log-odds of the relation scores of every (class, query) pair."""
        z_support, z_query = embed_episodes(self.backbone, support_x, query_x)  # (B, N, C, h, w)
        classes = class_sums(z_support, support_y, ways)  # (B, ways, C, h, w)
        tasks, n_query = z_query.shape[:2]
        pairs = torch.cat(
            [
                classes.unsqueeze(1).expand(tasks, n_query, *classes.shape[1:]),
                z_query.unsqueeze(2).expand(tasks, n_query, ways, *z_query.shape[2:]),
            ],
            dim=3,
        )  # (B, N_q, ways, 2C, h, w): the paper's (class, query) channel order
        hidden = self.relation_convs(pairs.flatten(0, 2)).flatten(1)  # (B*N_q*ways, C' h/4 w/4)
        return self.relation_head(hidden).view(tasks, n_query, ways)

    def meta_loss(self, batch: EpisodeBatch) -> MetaOutput:
        ways = batch.spec.ways
        logits = self.relation_logits(batch.support_x, batch.support_y, batch.query_x, ways)
        if self.loss == "mse":
            target = F.one_hot(batch.query_y, ways).to(logits.dtype)  # (B, N_q, ways)
            loss = F.mse_loss(torch.sigmoid(logits), target)
        else:
            loss = F.cross_entropy(logits.flatten(0, 1), batch.query_y.flatten())
        return MetaOutput(loss, logits)

    def predict(self, support_x: Tensor, support_y: Tensor, query_x: Tensor) -> Tensor:
        return self.relation_logits(support_x, support_y, query_x, infer_ways(support_y))
