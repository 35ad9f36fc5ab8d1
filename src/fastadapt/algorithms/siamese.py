"""Siamese Neural Networks (Koch, Zemel & Salakhutdinov 2015, ICML Deep Learning Workshop).

Twin copies of one embedding network map two images to ``h1``, ``h2``; a learned
linear layer on the component-wise L1 distance ``|h1 - h2|`` followed by a
sigmoid gives the probability that both show the same class. It is trained as a
verifier with binary cross-entropy on same/different pairs, and classifies a
query by comparing it with every support example (one-shot: the most similar).
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastadapt.algorithms.base import MetaOutput, infer_ways, register_algorithm
from fastadapt.functional import class_logsumexp, class_max, embed_episodes
from fastadapt.tasks.pairs import PairBatch
from fastadapt.tasks.spec import EpisodeBatch

AGGREGATIONS = ("mean", "max")


@register_algorithm("siamese")
class SiameseNet(nn.Module):
    """Siamese verification network around an embedding backbone.

    ``meta_loss`` takes either input:

    * a ``PairBatch`` (from ``fastadapt.tasks.PairSampler``; the paper's training):
      loss = mean binary cross-entropy of ``P(same)`` against ``batch.same``; the
      returned logits are ``(B, 1, 2)`` two-class logits ``[0, s]`` with ``s`` the
      pair's log-odds, so ``accuracy(logits, batch.query_y)`` is the verification accuracy;
    * an ``EpisodeBatch``: every (query, support example) pair of each episode is a
      pair, labelled 1 when their labels agree; loss = the mean binary cross-entropy over
      all ``B * N_q * N_s`` pairs (unbalanced: ``1/ways`` are same pairs); the logits are
      ``predict``'s ``(B, N_q, ways)``.

    ``predict`` returns, per class, the **log-odds** of the class's aggregated
    ``P(same)`` over its support examples: ``max`` (log-odds of the highest
    probability) or ``mean`` (log-odds of the mean probability); with one shot both
    are the pair log-odds. The argmax is the prediction.

    Args:
        backbone: maps ``(N, *example_shape)`` to embeddings ``(N, D)`` (flattened if not).
        embedding_dim: ``D``, the input size of the learned L1-distance layer.
        aggregation: how K-shot ``P(same)`` are combined per class, ``"mean"`` or ``"max"``.
    """

    # The engine trains this learner on ``PairSampler`` batches instead of episodes.
    train_on: ClassVar[str] = "pairs"

    def __init__(
        self, backbone: nn.Module, embedding_dim: int = 64, aggregation: Literal["mean", "max"] = "mean"
    ) -> None:
        super().__init__()
        if embedding_dim < 1:
            raise ValueError(f"embedding_dim must be >= 1, got {embedding_dim}")
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"unknown aggregation {aggregation!r}; choose one of {AGGREGATIONS}")
        self.backbone, self.embedding_dim, self.aggregation = backbone, embedding_dim, aggregation
        self.distance_layer = nn.Linear(embedding_dim, 1)

    def pair_logits(self, z1: Tensor, z2: Tensor) -> Tensor:
        """Log-odds of ``P(same)`` ``(...)`` for embeddings ``z1``, ``z2`` ``(..., D)``."""
        if z1.shape[-1] != self.embedding_dim:
            raise ValueError(
                f"the backbone gives {z1.shape[-1]}-d embeddings but the distance layer "
                f"was built for embedding_dim={self.embedding_dim}"
            )
        return self.distance_layer((z1 - z2).abs()).squeeze(-1)

    def episode_pair_logits(self, support_x: Tensor, query_x: Tensor) -> Tensor:
        """``(B, N_q, N_s)`` log-odds of ``P(same)`` of every (query, support example) pair."""
        z_support, z_query = embed_episodes(self.backbone, support_x, query_x)
        return self.pair_logits(z_query.flatten(2).unsqueeze(2), z_support.flatten(2).unsqueeze(1))

    def class_logits(self, pair_logits: Tensor, support_y: Tensor, ways: int) -> Tensor:
        """``(B, N_q, ways)`` log-odds of each class's aggregated ``P(same)`` from ``(B, N_q, N_s)``."""
        if self.aggregation == "max":
            return class_max(pair_logits, support_y, ways)  # sigmoid is monotone
        # log(mean p) - log(mean (1 - p)); the 1/count factors cancel.
        return class_logsumexp(F.logsigmoid(pair_logits), support_y, ways) - class_logsumexp(
            F.logsigmoid(-pair_logits), support_y, ways
        )

    def meta_loss(self, batch: EpisodeBatch | PairBatch) -> MetaOutput:
        if isinstance(batch, PairBatch):
            z = self.backbone(torch.cat([batch.x1, batch.x2])).flatten(1)  # (2B, D), one BatchNorm batch
            logits = self.pair_logits(*z.chunk(2))  # (B,)
            loss = F.binary_cross_entropy_with_logits(logits, batch.same.to(logits.dtype))
            two_class = F.pad(logits.unsqueeze(-1), (1, 0)).unsqueeze(1)  # (B, 1, 2): [0, s]
            return MetaOutput(loss, two_class)
        if not isinstance(batch, EpisodeBatch):
            raise TypeError(f"siamese meta_loss takes an EpisodeBatch or a PairBatch, got {type(batch).__name__}")
        pair_logits = self.episode_pair_logits(batch.support_x, batch.query_x)  # (B, N_q, N_s)
        same = (batch.query_y.unsqueeze(2) == batch.support_y.unsqueeze(1)).to(pair_logits.dtype)
        loss = F.binary_cross_entropy_with_logits(pair_logits, same)
        return MetaOutput(loss, self.class_logits(pair_logits, batch.support_y, batch.spec.ways))

    def predict(self, support_x: Tensor, support_y: Tensor, query_x: Tensor) -> Tensor:
        pair_logits = self.episode_pair_logits(support_x, query_x)
        return self.class_logits(pair_logits, support_y, infer_ways(support_y))
