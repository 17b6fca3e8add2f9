"""Training methods as plug-ins: one module per method, each registering a `Method` (registry.py).

Importing this package registers the built-in methods, in the order `cm train --help` lists them.
"""

from .registry import METHODS, LossInputs, Method, get_method, method_options, register, unregister
from .loss import Loss, PairLoss
from .edm import EDMLoss
from .cd import CDLoss
from .ct import CTLoss
from .ict import ICTLoss
from .ect import ECTLoss
from .scm import AdaptiveWeight, SCMLoss
from . import sct, scd  # register the sCM methods
from .meanflow import MeanFlowLoss
from .tcm import TCMLoss

__all__ = [
    "AdaptiveWeight", "CDLoss", "CTLoss", "ECTLoss", "EDMLoss", "ICTLoss", "METHODS", "Loss", "LossInputs", "MeanFlowLoss", "Method",
    "PairLoss", "SCMLoss", "TCMLoss", "scd", "sct",
    "get_method", "method_options", "register", "unregister",
]
