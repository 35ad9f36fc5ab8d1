"""Matching Networks (Vinyals, Blundell, Lillicrap, Kavukcuoglu & Wierstra 2016, arXiv:1606.04080).

A query is labelled by attention over the support set: the softmax of the cosine
similarities between its embedding and every support embedding weights the
support examples' one-hot labels (eq. 1-2), and training minimises the negative
log-likelihood of that label distribution. Full context embeddings (``fce=True``,
appendix A) embed the support set with a bidirectional LSTM (``g``) and each query
with an attention LSTM reading the support set for K processing steps (``f``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastadapt.algorithms.base import MetaOutput, infer_ways, register_algorithm, register_temperature
from fastadapt.functional import class_logsumexp, cosine_similarity, embed_episodes
from fastadapt.tasks.spec import EpisodeBatch


class FullContextEmbedding(nn.Module):
    """The FCE functions ``g(x_i, S)`` and ``f(x, S)`` of Vinyals et al. 2016, appendix A.

    ``g``: ``g'(x_i) + h_fwd_i + h_bwd_i`` from a bidirectional LSTM over the support
    embeddings in their given order. ``f``: K steps of an LSTM whose input is the
    query embedding ``f'(x)`` and whose previous state is ``[h_{k-1}, r_{k-1}]``, with
    ``h_k = h^_k + f'(x)`` and ``r_{k-1}`` the softmax(dot product)-weighted read-out
    of ``g(S)`` at ``h_{k-1}``; ``h_0 = f'(x)``. The concatenated state is fed by
    giving the cell ``[f'(x), r_{k-1}]`` as input and ``h_{k-1}`` as hidden state,
    which is the same affine map of ``(f'(x), h_{k-1}, r_{k-1})``.

    Args:
        embedding_dim: size ``D`` of the backbone's embeddings.
        processing_steps: ``K``, the attention LSTM's steps.
    """

    def __init__(self, embedding_dim: int, processing_steps: int) -> None:
        super().__init__()
        self.processing_steps = processing_steps
        self.support_lstm = nn.LSTM(embedding_dim, embedding_dim, batch_first=True, bidirectional=True)
        self.query_cell = nn.LSTMCell(2 * embedding_dim, embedding_dim)

    def forward(self, z_support: Tensor, z_query: Tensor) -> tuple[Tensor, Tensor]:
        """``g(S)`` ``(B, N_s, D)`` and ``f(x, S)`` ``(B, N_q, D)`` from ``g'``, ``f'`` of the same shapes."""
        both, _ = self.support_lstm(z_support)  # (B, N_s, 2D)
        h_forward, h_backward = both.chunk(2, dim=-1)
        g = z_support + h_forward + h_backward  # (B, N_s, D)
        tasks, n_query, dim = z_query.shape
        query = z_query.reshape(tasks * n_query, dim)  # f'(x), (B*N_q, D)
        h, c = query, torch.zeros_like(query)
        for _ in range(self.processing_steps):
            attention = (h.view(tasks, n_query, dim) @ g.transpose(1, 2)).softmax(-1)  # (B, N_q, N_s)
            readout = (attention @ g).reshape(tasks * n_query, dim)  # r_{k-1}, (B*N_q, D)
            h_hat, c = self.query_cell(torch.cat([query, readout], -1), (h, c))
            h = h_hat + query
        return g, h.view(tasks, n_query, dim)


@register_algorithm("matching")
class MatchingNet(nn.Module):
    """Matching Networks around an embedding backbone.

    ``meta_loss`` and ``predict`` return **log-probabilities**
    ``log P(y = c | x, S) = log sum_i a(x, x_i) [y_i = c]`` (each row's exponentials sum
    to 1). They are valid logits: ``F.cross_entropy`` on them equals the paper's NLL.

    Args:
        backbone: maps ``(N, *example_shape)`` to embeddings ``(N, D)`` (flattened if not).
        fce: use full context embeddings (``FullContextEmbedding``, meta-parameters).
        embedding_dim: ``D``, needed to size the FCE LSTMs (ignored without ``fce``).
        processing_steps: ``K`` steps of the FCE attention LSTM (the paper does not state it).
        temperature: (initial) scale of the cosine similarities inside the softmax
            (the paper's formula: 1).
        learn_temperature: make the scale a meta-parameter (stored as its logarithm). With
            ReLU embeddings the cosines lie in [0, 1], so at scale 1 the attention is
            nearly uniform and the loss saturates (train accuracy stalled near 91 % on
            Omniglot 5-way 1-shot); a learned scale removes the plateau.
    """

    def __init__(
        self,
        backbone: nn.Module,
        fce: bool = False,
        embedding_dim: int = 64,
        processing_steps: int = 5,
        temperature: float = 1.0,
        learn_temperature: bool = False,
    ) -> None:
        super().__init__()
        if embedding_dim < 1 or processing_steps < 1:
            raise ValueError(
                f"embedding_dim and processing_steps must be >= 1, got {embedding_dim}, {processing_steps}"
            )
        self.backbone, self.embedding_dim = backbone, embedding_dim
        register_temperature(self, temperature, learn_temperature)
        self.fce = FullContextEmbedding(embedding_dim, processing_steps) if fce else None

    def embed(self, support_x: Tensor, query_x: Tensor) -> tuple[Tensor, Tensor]:
        """``g(S)`` ``(B, N_s, D)`` and ``f(x, S)`` ``(B, N_q, D)``."""
        z_support, z_query = embed_episodes(self.backbone, support_x, query_x)
        z_support, z_query = z_support.flatten(2), z_query.flatten(2)
        if self.fce is None:
            return z_support, z_query
        if z_support.shape[-1] != self.embedding_dim:
            raise ValueError(
                f"the backbone gives {z_support.shape[-1]}-d embeddings but the full context "
                f"embeddings were built for embedding_dim={self.embedding_dim}"
            )
        return self.fce(z_support, z_query)

    def log_probs(self, support_x: Tensor, support_y: Tensor, query_x: Tensor, ways: int) -> Tensor:
        """``(B, N_q, ways)`` log-probabilities of the attention-weighted support labels."""
        g, f = self.embed(support_x, query_x)
        attention = F.log_softmax(self.log_temperature.exp() * cosine_similarity(f, g), -1)  # (B, N_q, N_s)
        return class_logsumexp(attention, support_y, ways)

    def meta_loss(self, batch: EpisodeBatch) -> MetaOutput:
        log_probs = self.log_probs(batch.support_x, batch.support_y, batch.query_x, batch.spec.ways)
        loss = F.nll_loss(log_probs.flatten(0, 1), batch.query_y.flatten())
        return MetaOutput(loss, log_probs)

    def predict(self, support_x: Tensor, support_y: Tensor, query_x: Tensor) -> Tensor:
        return self.log_probs(support_x, support_y, query_x, infer_ways(support_y))
