"""Truncated consistency models (Lee et al., ICLR 2025, arXiv 2410.14895): a second training stage
that spends the network on the truncated range [t′, T] and anchors it at t′ to the first stage.

Stage 1 is easy consistency training (ect.py's loss, here from the run's own start: `--init-from`,
`--init-from-teacher` or a fresh network). Stage 2 keeps a frozen copy f₁ of the stage-1 network
and trains f_θ with ECT's pair loss on noise levels t ∈ [t′, σ_max] only:

    target(r) = sg f_θ(x + r·ε, r)    where r ≥ t′  (the consistency target, as in stage 1)
              = f₁(x + r·ε, r)         where r < t′  (below the dividing time: the stage-1 model)
    loss      = pseudo-Huber(f_θ(x + t·ε, t), target(r)) / (t − r)

with t drawn from ECT's log-normal proposal truncated to [t′, σ_max] (exactly, by its inverse CDF)
and, for a share `boundary_prob` of the samples, t = t′ — the boundary samples, whose r < t′ ties
f_θ at t′ to f₁. Their loss is weighted `boundary_weight`: per sample, 1/(1 − p) for the others
and w_b/p for the boundary ones, so the batch mean estimates L_cm + w_b·L_boundary as in NVIDIA's
FastGen TCM (boundary probability 0.25, weight 0.1, t′ = 1 in EDM σ units for CIFAR-10). ECT's
curriculum for r(t) starts again over stage 2 (FastGen continues at its finest gap; on a 2-D toy
from scratch that reached 34 % of one-step samples on the modes against 72 % with the restart,
and from a trained stage 1 both gave 90 %; docs/tcm.md). In the restart's first ECT stage r = 0
up to t ≈ 1.95, so there the boundary samples learn the clean x, not f₁ (docs/tcm.md).

Without `--init-from`, one run does both stages: stage 1 for the first `stage1_share` of the steps,
then f₁ is the network as it stands (not its EMA). With `--init-from` (a consistency model, e.g. an
ECT or iCT run) the run is stage 2 only and f₁ is that model. The exported model is f_θ: for
one-step sampling at σ_max; a second step should re-noise to σ ≥ t′ (its trained range), e.g.
`--sigmas 80,1`.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch

from ...errors import InvalidInputError, about
from ...io.pipeline_folder import folder_kind
from ...parametrization import SIGMA_MAX, SIGMA_MIN, Preconditioned, append_dims
from ..curricula import ect_r, ect_stage
from ..distances import pseudo_huber
from ..settings import RunSettings, positive_number, setting
from .ect import ECTLoss, ECTOptions
from .loss import Loss, same_dropout, unwrap
from .options import p_mean_option, p_std_option
from .registry import LossInputs, Method, register

SHARE = (lambda v: 0 <= v < 1, "a share in [0, 1)")


@dataclass
class TCMOptions(ECTOptions):
    """TCM's settings (FastGen's defaults for the boundary; ECT's for the pair loss)."""

    dividing_sigma: float = setting(1.0, "the dividing time t' (EDM sigma): stage 2 trains sigma in [t', sigma_max]",
                                    check=positive_number("a sigma > 0"))
    boundary_prob: float = setting(0.25, "share of stage-2 samples drawn at t' (the boundary loss)",
                                   check=(lambda v: 0 < v < 1, "a share in (0, 1)"))
    boundary_weight: float = setting(0.1, "weight of the boundary loss", check=positive_number("a weight > 0"))
    stage1_share: float | None = setting(None, "share of --steps for stage 1 (default 0.5, or 0 with --init-from: "
                                               "that model is stage 1)", check=SHARE)
    stage2_lr: float = setting(0.5, "in a run with both stages, stage 2 trains at --lr times this (FastGen's TCM: 5e-5 after "
                                    "ECT's 1e-4); with --init-from --lr is stage 2's",
                               check=positive_number("a factor > 0"))
    p_mean: float = p_mean_option(-1.1)
    p_std: float = p_std_option(2.0)

    def stage1_steps(self, steps: int) -> int:
        """Stage 1's steps of a run of `steps` (0: stage 2 only, from --init-from)."""
        return round(self.stage1_share * steps)

    def complete(self, run: RunSettings) -> None:
        if self.stage1_share is None:
            self.stage1_share = 0.0 if run.init_from else 0.5
        super().complete(run)

    @classmethod
    def saved(cls, settings: dict) -> dict:
        """Runs saved before --stage2-lr was refused where stage 2 runs alone kept the value given."""
        settings = super().saved(settings)
        if settings.get("init_from") and not settings.get("stage1_share"):
            settings = {**settings, "stage2_lr": cls.stage2_lr}
        return settings

    def check(self, run: RunSettings) -> None:
        super().check(run)
        if not run.sigma_min < self.dividing_sigma < run.sigma_max:
            raise InvalidInputError(f"dividing_sigma: {self.dividing_sigma} must lie between --sigma-min "
                                    f"{run.sigma_min} and --sigma-max {run.sigma_max}")
        first = self.stage1_steps(run.steps)
        if not run.init_from and not 1 <= first < run.steps:
            raise InvalidInputError(f"stage1_share: {self.stage1_share} of {run.steps} steps gives stage 1 {first} "
                                    "steps; without --init-from both stages need at least one step")
        if run.init_from and first == 0:  # stage 2 alone
            if self.stage2_lr != TCMOptions.stage2_lr:
                raise InvalidInputError(f"stage2_lr: {self.stage2_lr} is not used: with --init-from (and no stage 1) "
                                        "the run is stage 2 alone and trains at --lr")
            check_stage1_model(run.init_from)


def check_stage1_model(path: str) -> None:
    """Stage 2 alone starts from (and anchors to) a consistency model: --init-from may not hold a
    diffusion model (its time input is checked when the network is loaded)."""
    try:
        kind = folder_kind(path)
    except InvalidInputError as exc:
        raise about("init_from", exc) from None
    if kind.teacher:
        raise InvalidInputError(f"init_from: {path} holds {kind.summary}; stage 2 of --method tcm starts from its "
                                "stage 1, a consistency model; to start stage 1 from a diffusion model give it as "
                                "--teacher")


def truncated_lognormal(normal: torch.Tensor, p_mean: float, p_std: float, low: float, high: float) -> torch.Tensor:
    """σ = exp(P_mean + P_std·n) conditioned on low ≤ σ ≤ high, from standard normal draws n: n is
    mapped through Φ to a uniform u, then to Φ⁻¹(Φ(a) + u·(Φ(b) − Φ(a))) with a, b the bounds of n
    (the inverse CDF of the truncated normal; float64; a range in the upper tail is drawn as the
    mirror image of the lower one, where Φ does not round to 1)."""
    a, b = ((math.log(v) - p_mean) / p_std for v in (low, high))
    sign = -1.0 if a > 0 else 1.0           # an upper tail is drawn mirrored: Φ(a) would round to 1 there
    a, b = sorted((sign * a, sign * b))
    lo, hi = (math.erfc(-v / math.sqrt(2)) / 2 for v in (a, b))   # Φ through erfc: exact far in the tail
    u = torch.special.erfc(-sign * normal.to(torch.float64) / math.sqrt(2)) / 2   # mirrored too: σ grows with n
    n = sign * torch.special.ndtri(lo + u * (hi - lo))
    return torch.exp(p_mean + p_std * n).clamp(low, high)


class TCMLoss(Loss):
    """Stage 1: ECT's loss; stage 2: the truncated loss with the boundary to the frozen f₁ (see the module)."""

    def __init__(
        self,
        student: Preconditioned,            # f_θ around the trained network (DDP-wrapped when distributed)
        target: Preconditioned,             # f_θ around the plain network (stop-gradient targets)
        total_steps: int,
        stage1_steps: int,                  # 0: f₁ is the network as given (from --init-from)
        num_stages: int = TCMOptions.ect_stages,
        dividing_sigma: float = TCMOptions.dividing_sigma,
        boundary_prob: float = TCMOptions.boundary_prob,
        boundary_weight: float = TCMOptions.boundary_weight,
        p_mean: float = TCMOptions.p_mean,
        p_std: float = TCMOptions.p_std,
        sigma_min: float = SIGMA_MIN,
        sigma_max: float = SIGMA_MAX,
    ) -> None:
        self.student, self.target = student, target
        self.total_steps, self.stage1_steps = total_steps, stage1_steps
        self.num_stages, self.dividing_sigma = num_stages, dividing_sigma
        self.boundary_prob, self.boundary_weight = boundary_prob, boundary_weight
        self.p_mean, self.p_std = p_mean, p_std
        self.sigma_min, self.sigma_max = sigma_min, sigma_max
        self.stage1 = ECTLoss(student, max(stage1_steps, 1), num_stages=num_stages, p_mean=p_mean, p_std=p_std,
                              sigma_min=sigma_min, sigma_max=sigma_max, target=target)
        self.frozen: Preconditioned | None = None   # f₁, made when stage 2 begins
        if stage1_steps == 0:
            self.freeze()

    def freeze(self) -> None:
        """f₁ := a frozen copy of the network as it stands now."""
        network = copy.deepcopy(unwrap(self.target.network)).requires_grad_(False)
        self.frozen = type(self.target)(network, self.target.sigma_data, self.target.sigma_min)

    def __call__(self, x, class_labels, step, rng):
        if step < self.stage1_steps:
            return self.stage1(x, class_labels, step, rng)
        if self.frozen is None:
            self.freeze()
        return self.stage2(x, class_labels, rng, step)

    def sample_sigmas(self, rng) -> tuple[torch.Tensor, torch.Tensor]:
        """(t, boundary) per sample: t from the truncated proposal, or t′ where `boundary`."""
        t = truncated_lognormal(rng.randn(), self.p_mean, self.p_std, self.dividing_sigma, self.sigma_max)
        boundary = rng.rand().to(torch.float64) < self.boundary_prob
        return torch.where(boundary, torch.full_like(t, self.dividing_sigma), t), boundary

    def stage2(self, x: torch.Tensor, class_labels: torch.Tensor | None, rng, step: int) -> torch.Tensor:
        t, boundary = self.sample_sigmas(rng)
        t = t.to(x.device)
        r = ect_r(t, ect_stage(step - self.stage1_steps, self.total_steps - self.stage1_steps, self.num_stages))
        eps = rng.randn(*x.shape[1:])
        r_eval = r.clamp(min=self.sigma_min)
        x_t, x_r = x + append_dims(t, x) * eps, x + append_dims(r_eval, x) * eps
        with same_dropout(x.device) as rewind:
            student = self.student(x_t, t, class_labels)
            with torch.no_grad():
                rewind()
                target = self.target(x_r, r_eval, class_labels)
                below = r < self.dividing_sigma
                if bool(below.any()):
                    rewind()
                    anchored = self.frozen(x_r, r_eval, class_labels)
                    target = torch.where(append_dims(below, x).bool(), anchored, target)
        target = torch.where(append_dims(r <= self.sigma_min, x).bool(), x.float(), target)
        weight = torch.where(boundary.to(x.device), self.boundary_weight / self.boundary_prob,
                             1 / (1 - self.boundary_prob))
        return pseudo_huber(student, target) * weight.float() / (t - r).float()

    def state_dict(self) -> dict:
        return {} if self.frozen is None else {"stage1_network": self.frozen.network.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if "stage1_network" in state:
            self.freeze()
            self.frozen.network.load_state_dict(state["stage1_network"])


def lr_factor(run: RunSettings, step: int) -> float:
    """1 in stage 1, `stage2_lr` in stage 2 of a run that has both (with --init-from, --lr is stage 2's)."""
    first = run.options.stage1_steps(run.steps)
    return run.options.stage2_lr if 0 < first <= step else 1.0


def build_loss(inputs: LossInputs) -> TCMLoss:
    run, o = inputs.config, inputs.options
    return TCMLoss(inputs.wrap(inputs.student), inputs.wrap(inputs.network), total_steps=run.steps,
                   stage1_steps=o.stage1_steps(run.steps), num_stages=o.ect_stages,
                   dividing_sigma=o.dividing_sigma, boundary_prob=o.boundary_prob, boundary_weight=o.boundary_weight,
                   p_mean=o.p_mean, p_std=o.p_std, sigma_min=run.sigma_min, sigma_max=run.sigma_max)


METHOD = register(Method(
    name="tcm",
    summary="truncated consistency models: ECT, then a stage on [t', sigma_max] anchored at t' to stage 1 "
            "(--init-from a consistency model to run stage 2 only)",
    parametrization="consistency",
    build_loss=build_loss,
    options=TCMOptions,
    teacher="optional",
    init_from_teacher=True,      # --teacher: stage 1 starts from it, as ECT's does
    teacher_in_loss=False,
    lr_factor=lr_factor,
))

__all__ = ["TCMLoss", "TCMOptions", "truncated_lognormal"]
