"""Prototypical Networks (Snell, Swersky & Zemel 2017, arXiv:1703.05175).

Each class is represented by the mean embedding of its support examples (its
prototype); a query is classified by a softmax over negative distances to the
prototypes. Squared Euclidean distance (the paper's choice) or cosine
similarity, optionally scaled by a learnable temperature. There is no inner
loop: adaptation is computing the prototypes.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastadapt.algorithms.base import MetaOutput, infer_ways, register_algorithm, register_temperature
from fastadapt.compact_activations import compact_activations
from fastadapt.extension import load_extension
from fastadapt.functional import cosine_similarity, embed_episodes, prototypes, squared_euclidean
from fastadapt.runtime import check_precision
from fastadapt.tasks.spec import EpisodeBatch

DISTANCES = ("euclidean", "cosine")


@register_algorithm("protonet")
class ProtoNet(nn.Module):
    """Prototypical Networks around an embedding backbone.

    Args:
        backbone: maps ``(N, *example_shape)`` to embeddings ``(N, D)``.
        distance: ``"euclidean"`` (squared) or ``"cosine"``.
        temperature: initial scale of the logits (``logits = scale * -distance`` or
            ``scale * cosine``); the paper uses 1 with Euclidean distance.
        learn_temperature: make the scale a meta-parameter (stored as its logarithm).
        precision: ``"bfloat16"`` runs the backbone under bfloat16 autocast (distances,
            loss and weights stay float32; ``fastadapt.runtime.compute_precision``);
            ``"auto"`` does so only where the hardware has bfloat16 natively.
        compact_activations: the backbone pass with a graph keeps smaller activations for its
            backward (``fastadapt.compact_activations``: a cheap first convolution's output is
            recomputed under its training-mode BatchNorm instead of kept, ReLUs keep one-byte
            masks); needs fastadapt's C++ extension. Same gradients up to rounding; the
            BatchNorm part does not apply under bfloat16 autocast.
    """

    def __init__(
        self,
        backbone: nn.Module,
        distance: Literal["euclidean", "cosine"] = "euclidean",
        temperature: float = 1.0,
        learn_temperature: bool = False,
        precision: Literal["float32", "bfloat16", "auto"] = "float32",
        compact_activations: bool = False,
    ) -> None:
        super().__init__()
        if distance not in DISTANCES:
            raise ValueError(f"unknown distance {distance!r}; choose one of {DISTANCES}")
        check_precision(precision)
        self.backbone, self.distance, self.precision = backbone, distance, precision
        self.compact_activations = compact_activations
        if compact_activations:
            load_extension()  # built or loaded now: a missing compiler fails here, naming what is missing
        register_temperature(self, temperature, learn_temperature)

    def embed(self, support_x: Tensor, query_x: Tensor) -> tuple[Tensor, Tensor]:
        """Embed all tasks' support and query examples in one backbone call.

        Returns:
            ``(B, N_s, D)`` and ``(B, N_q, D)`` (feature maps are flattened).
        """
        with compact_activations(self.compact_activations and torch.is_grad_enabled()):
            z_support, z_query = embed_episodes(self.backbone, support_x, query_x, self.precision)
        return z_support.flatten(2), z_query.flatten(2)

    def logits(self, z_support: Tensor, support_y: Tensor, z_query: Tensor, ways: int) -> Tensor:
        """``(B, N_q, ways)`` logits from embeddings ``(B, N_s, D)``, ``(B, N_q, D)``."""
        protos = prototypes(z_support, support_y, ways)  # (B, ways, D)
        if self.distance == "euclidean":
            scores = -squared_euclidean(z_query, protos)
        else:
            scores = cosine_similarity(z_query, protos)
        return scores * self.log_temperature.exp()

    def meta_loss(self, batch: EpisodeBatch) -> MetaOutput:
        z_support, z_query = self.embed(batch.support_x, batch.query_x)
        logits = self.logits(z_support, batch.support_y, z_query, batch.spec.ways)
        loss = F.cross_entropy(logits.flatten(0, 1), batch.query_y.flatten())
        return MetaOutput(loss, logits)

    def predict(self, support_x: Tensor, support_y: Tensor, query_x: Tensor) -> Tensor:
        z_support, z_query = self.embed(support_x, query_x)
        return self.logits(z_support, support_y, z_query, infer_ways(support_y))
