"""Backbones: plain ``nn.Module``s registered by name (``create_model("conv4")``).

Importing a backbone's module registers it.
"""

from fastadapt.models.conv4 import Conv4
from fastadapt.models.mlp import MLP
from fastadapt.models.relation_encoder import RelationEncoder
from fastadapt.models.registry import BACKBONES, create_model, list_models, register_model

__all__ = ["BACKBONES", "MLP", "Conv4", "create_model", "list_models", "register_model"]
