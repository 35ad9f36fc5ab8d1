"""Multi-layer perceptron; the default is MAML's 1-40-40-1 sinusoid regressor (Finn et al. 2017)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from fastadapt.models.registry import register_model


@register_model("mlp")
class MLP(nn.Module):
    """Fully connected ReLU network.

    Args:
        in_features: input size.
        hidden: sizes of the hidden layers.
        out_features: output size.

    Shapes:
        input ``(N, in_features)`` (or ``(N, *dims)``, flattened); output ``(N, out_features)``.
    """

    def __init__(
        self, in_features: int = 1, hidden: Sequence[int] = (40, 40), out_features: int = 1
    ) -> None:
        super().__init__()
        sizes = [in_features, *hidden, out_features]
        if any(s < 1 for s in sizes):
            raise ValueError(f"layer sizes must be positive, got {sizes}")
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.flatten(1))
