"""Training: EDM teachers, consistency distillation (CD), consistency training (CT, iCT), ECT.

Losses are callables (`losses.py`), curricula are pure functions of the step
(`curricula.py`), and the loop (`loop.py`) owns optimizer, EMA, distributed, checkpoints
and logging.
"""

from .config import METHODS, TrainConfig
from .curricula import ct_schedule, ect_r, ict_index_probabilities, ict_schedule
from .distances import l1, l2, pseudo_huber
from .losses import CDLoss, CTLoss, ECTLoss, EDMLoss, ICTLoss
from .loop import Trainer, TrainingDiverged, train

__all__ = [
    "CDLoss", "CTLoss", "ECTLoss", "EDMLoss", "ICTLoss", "METHODS", "TrainConfig", "Trainer",
    "TrainingDiverged", "ct_schedule", "ect_r", "ict_index_probabilities", "ict_schedule", "l1", "l2",
    "pseudo_huber", "train",
]
