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
from fastadapt.algorithms.protonet import ProtoNet

__all__ = ["ALGORITHMS", "MetaLearner", "MetaOutput", "ProtoNet", "create_algorithm", "register_algorithm"]
