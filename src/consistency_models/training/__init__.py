"""Training: EDM teachers, consistency distillation (CD), consistency training (CT, iCT), ECT, sCT, sCD.

Each method is a plug-in in `methods/` (its loss, its options class and needs, registered by
name); a run's settings are `RunSettings` (every method's, `settings.py`) plus the method's
`MethodOptions`, put together by `TrainConfig` (`config.py`); curricula are pure functions of
the step (`curricula.py`); the loop (`loop.py`) owns optimizer, EMA, distributed, checkpoints
and logging; `run_networks.py` builds what a run trains, `export.py` and `preview.py` write
what people use.
"""

from .config import TrainConfig
from .curricula import ct_curriculum, ect_r, ict_curriculum, ict_index_probabilities
from .distances import l1, l2, pseudo_huber
from .loop import Trainer, TrainingDiverged, train
from .methods import METHODS, CDLoss, CTLoss, ECTLoss, EDMLoss, ICTLoss, Method, get_method, register
from .settings import MethodOptions, RunSettings, setting

__all__ = [
    "CDLoss", "CTLoss", "ECTLoss", "EDMLoss", "ICTLoss", "METHODS", "Method", "MethodOptions", "RunSettings",
    "TrainConfig", "Trainer",
    "TrainingDiverged", "ct_curriculum", "ect_r", "get_method", "ict_curriculum", "ict_index_probabilities", "l1", "l2",
    "pseudo_huber", "register", "setting", "train",
]
