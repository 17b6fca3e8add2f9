"""The optimizers of a training run, in their fastest exact form on the parameters' device.

RAdam (Liu et al. 2020) is what OpenAI's consistency-model code uses for CD/CT; AdamW
(Loshchilov & Hutter 2019) is EDM's Adam plus optional decoupled weight decay. PyTorch picks
the one-tensor-at-a-time ("for-loop") implementation on CPU, which makes several full passes
over every parameter and state tensor: on the 296 M-parameter `imagenet64` network one RAdam
step takes 2–3 s on two CPU cores once the rectification starts (step ≥ 6), 0.45–1.4 s
multi-tensor ("foreach"), and 0.10 s as one fused Adam kernel (`RAdam` below); AdamW's fused
kernel (CPU and CUDA) takes 0.16 s against 0.6 s. The updates are the same algorithm; only
the floating-point rounding differs (tests compare with the papers' updates in float64).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch

OPTIMIZERS = ("radam", "adamw")
FUSED_DEVICES = ("cpu", "cuda")
FUSED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def rectification(beta2: float, t: float) -> float | None:
    """RAdam's variance rectification r_t at step t (Liu et al. 2020, Algorithm 2), or None
    while ρ_t ≤ 5 (the variance is not yet tractable and the step is plain momentum)."""
    rho_inf = 2 / (1 - beta2) - 1
    rho_t = rho_inf - 2 * t * beta2**t / (1 - beta2**t)
    if rho_t <= 5:
        return None
    return math.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t))


class RAdam(torch.optim.RAdam):
    """torch.optim.RAdam whose rectified steps run as one fused Adam kernel (CPU and CUDA).

    With t the step, m̂_t = m_t/(1 − β1^t) and r_t the variance rectification (Liu et al. 2020,
    Algorithm 2), the rectified update (ρ_t > 5, from step 6 on for β2 = 0.999)
        θ ← θ − lr·r_t·m̂_t·√(1 − β2^t)/(√v_t + ε)
    is Adam's update θ ← θ − lr′·m̂_t/(√(v_t/(1 − β2^t)) + ε′) with lr′ = lr·r_t and
    ε′ = ε/√(1 − β2^t); m_t and v_t are updated alike. So those steps call PyTorch's fused Adam
    with lr′ and ε′ on the same state tensors (torch.optim.RAdam has no fused path of its own;
    on CUDA its multi-tensor path is ~10 kernels per parameter list); the first steps (plain
    momentum), other devices and options (decoupled weight decay, maximize, differentiable, capturable, complex or
    sparse parameters) take torch.optim.RAdam's own path. State and state dict are RAdam's.
    """

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        groups = [self._fused_group(group) for group in self.param_groups]
        if any(g is None for g in groups):
            return super().step(closure)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group, tensors in zip(self.param_groups, groups):
            if not tensors[0]:
                continue
            beta1, beta2 = group["betas"]
            t = float(tensors[4][0]) + 1
            bias_correction2 = 1 - beta2**t
            for params, grads, exp_avgs, exp_avg_sqs in _by_device_and_dtype(*tensors[:4]):
                # One step tensor holding t on the parameters' device for the whole list: the
                # kernel only reads it, and RAdam's own step counters stay on the CPU.
                step = torch.full((), t, dtype=torch.float32, device=params[0].device)
                torch._fused_adam_(
                    params, grads, exp_avgs, exp_avg_sqs, [], [step] * len(params), amsgrad=False,
                    lr=float(group["lr"]) * rectification(beta2, t), beta1=beta1, beta2=beta2,
                    weight_decay=group["weight_decay"], eps=group["eps"] / math.sqrt(bias_correction2),
                    maximize=False, grad_scale=None, found_inf=None,
                )
            torch._foreach_add_(tensors[4], 1)
        return loss

    def _fused_group(self, group: dict) -> tuple[list[torch.Tensor], ...] | None:
        """(params, grads, exp_avgs, exp_avg_sqs, steps) of the group's parameters with a
        gradient, or None when this step must take torch.optim.RAdam's path."""
        if any(group.get(flag) for flag in ("decoupled_weight_decay", "maximize", "differentiable", "capturable")):
            return None
        if isinstance(group["lr"], torch.Tensor):
            return None
        tensors: tuple[list[torch.Tensor], ...] = ([], [], [], [], [])
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state.get(p)
            if (state is None or "step" not in state or p.device.type not in FUSED_DEVICES or p.is_complex()
                    or p.grad.is_sparse or p.dtype not in FUSED_DTYPES or p.grad.dtype != p.dtype):
                return None
            for lst, value in zip(tensors, (p, p.grad, state["exp_avg"], state["exp_avg_sq"], state["step"])):
                lst.append(value)
        steps = tensors[4]
        if steps:
            t = float(steps[0]) + 1
            if any(float(s) + 1 != t for s in steps) or rectification(group["betas"][1], t) is None:
                return None
        return tensors


def _by_device_and_dtype(*lists: list[torch.Tensor]) -> list[tuple[list[torch.Tensor], ...]]:
    """The parallel lists split by the first list's (device, dtype): one fused kernel call each."""
    groups: dict[tuple, tuple[list[torch.Tensor], ...]] = {}
    for row in zip(*lists):
        bucket = groups.setdefault((row[0].device, row[0].dtype), tuple([] for _ in lists))
        for lst, tensor in zip(bucket, row):
            lst.append(tensor)
    return list(groups.values())


def build_optimizer(
    name: str, params: Iterable[torch.nn.Parameter], lr: float, weight_decay: float = 0.0
) -> torch.optim.Optimizer:
    """`name` ("radam" or "adamw") over `params`: fused AdamW where PyTorch has the kernel for
    every parameter's device and dtype, multi-tensor otherwise; `RAdam` (multi-tensor, its
    rectified steps fused on CPU)."""
    params = list(params)
    if name == "radam":
        return RAdam(params, lr=lr, weight_decay=weight_decay, foreach=True)
    if name == "adamw":
        fusable = bool(params) and all(p.device.type in FUSED_DEVICES and p.dtype in FUSED_DTYPES for p in params)
        if fusable:
            return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, foreach=True)
    raise ValueError(f"optimizer: unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
