"""Meta-learning algorithms, one file each, registered by name.

Importing an algorithm's module registers it.
"""

from fastadapt.algorithms.base import (
    ALGORITHMS,
    MetaLearner,
    MetaOutput,
    create_algorithm,
    register_algorithm,
)
from fastadapt.algorithms.anil import ANIL
from fastadapt.algorithms.maml import MAML
from fastadapt.algorithms.matching import MatchingNet
from fastadapt.algorithms.metasgd import MetaSGD
from fastadapt.algorithms.protonet import ProtoNet
from fastadapt.algorithms.relation import RelationNet
from fastadapt.algorithms.reptile import Reptile
from fastadapt.algorithms.siamese import SiameseNet

__all__ = [
    "ALGORITHMS", "ANIL", "MAML", "MatchingNet", "MetaLearner", "MetaOutput", "MetaSGD", "ProtoNet",
    "RelationNet", "Reptile", "SiameseNet",
    "create_algorithm", "register_algorithm",
]
