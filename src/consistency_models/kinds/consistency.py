"""The consistency function f_θ(x, σ) of Song et al. 2023: Algorithm 1 sampling on a Karras grid."""

from __future__ import annotations

from ..parametrization import ConsistencyFunction
from ..sampling import CONSISTENCY_SAMPLER
from . import ModelKind, register

KIND = register(ModelKind(
    name="consistency",
    summary="a consistency model",
    wrapper=ConsistencyFunction,
    sampler=CONSISTENCY_SAMPLER,
    openai_prefix="",           # cd_*, ct_*
))
