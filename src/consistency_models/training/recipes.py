"""Published training runs by name: `cm train --recipe NAME` (or `TrainConfig.from_recipe`).

A recipe sets every hyperparameter of a run that `TrainConfig` can express; options given
explicitly override it; the data (and, for distillation, the teacher and the LPIPS weight
files) always come from the user. docs/recipes.md lists each value with its source line.

Known differences from the originals: OpenAI's runs use fp16 with a dynamic loss scale (here
`precision="float16"`, with PyTorch's GradScaler on CUDA); OpenAI's training loop never stops by
itself (`total_training_steps` only shapes N(k) and μ(k)) and its `--loss_norm` flag never
reaches the loss (every published run trained with LPIPS) — the recipes follow the launch
lines as written; the iCT and ECT CIFAR-10 networks (NCSN++/DDPM++) are not presets here, so
those recipes leave the network to `--preset`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidInputError

OPENAI_EMA_IMAGENET = (0.999, 0.9999, 0.9999432189950708)
OPENAI_EMA_LSUN = (0.9999, 0.99994, 0.9999432189950708)
_OPENAI = {"optimizer": "radam", "weight_decay": 0.0, "grad_clip": 0.0, "precision": "float16", "dropout": 0.0,
           "accumulation": 1, "xflip": True, "warmup_steps": 0}


@dataclass(frozen=True)
class Recipe:
    name: str
    summary: str
    source: str                                   # where the values come from (details in docs/recipes.md)
    settings: dict[str, Any] = field(default_factory=dict)


def _recipes() -> dict[str, Recipe]:
    cd64 = {**_OPENAI, "method": "cd", "preset": "imagenet64", "num_scales": 40, "target_mu": 0.95, "solver": "heun",
            "steps": 600_000, "lr": 8e-6, "batch_size": 2048, "ema_rates": OPENAI_EMA_IMAGENET, "init_from_teacher": True}
    cd256 = {**cd64, "preset": "lsun256", "lr": 1e-5, "batch_size": 256, "ema_rates": OPENAI_EMA_LSUN}
    ct64 = {**_OPENAI, "method": "ct", "preset": "imagenet64", "s0": 2, "s1": 200, "mu0": 0.95, "mu_form": "openai",
            "distance": "lpips", "steps": 800_000, "lr": 1e-4, "batch_size": 2048, "ema_rates": OPENAI_EMA_IMAGENET}
    ct256 = {**ct64, "preset": "lsun256", "s1": 150, "steps": 1_000_000, "lr": 5e-5, "batch_size": 256,
             "ema_rates": OPENAI_EMA_LSUN}
    ict = {"method": "ict", "s0": 10, "s1": 1280, "distance": "pseudo_huber", "optimizer": "radam", "lr": 1e-4,
           "weight_decay": 0.0, "warmup_steps": 0}
    launch = "openai/consistency_models scripts/launch.sh"
    found = [
        Recipe("openai-cd-imagenet64-l2", "CD on ImageNet-64, l2 (OpenAI)", f"{launch} L22", {**cd64, "distance": "l2"}),
        Recipe("openai-cd-imagenet64-lpips", "CD on ImageNet-64, LPIPS (OpenAI)", f"{launch} L25",
               {**cd64, "distance": "lpips"}),
        Recipe("openai-ct-imagenet64", "CT on ImageNet-64 (OpenAI; a --teacher only initialises the student)",
               f"{launch} L38", ct64),
        Recipe("openai-cd-bedroom256-l2", "CD on LSUN bedroom-256, l2 (OpenAI)", f"{launch} L28",
               {**cd256, "distance": "l2"}),
        Recipe("openai-cd-bedroom256-lpips", "CD on LSUN bedroom-256, LPIPS (OpenAI)", f"{launch} L31",
               {**cd256, "distance": "lpips"}),
        Recipe("openai-ct-bedroom256", "CT on LSUN bedroom-256 (OpenAI)", f"{launch} L41", ct256),
        Recipe("ict-cifar10", "improved CT on CIFAR-10 (iCT paper; network: --preset)",
               "Song & Dhariwal 2023, as quoted by diffusers' iCT script and the ECT README",
               {**ict, "steps": 400_000, "batch_size": 1024, "ema_rates": (0.99993,), "dropout": 0.3}),
        Recipe("ict-imagenet64", "improved CT on ImageNet-64 (iCT paper; values not verified offline, see docs)",
               "Song & Dhariwal 2023, Appendix (transcribed from memory; unverified here)",
               {**ict, "preset": "imagenet64", "steps": 800_000, "batch_size": 4096, "ema_rates": (0.99997,),
                "dropout": 0.2, "precision": "float16"}),
        Recipe("ect-cifar10", "easy consistency tuning on CIFAR-10 (ECT repository; network: --preset)",
               "locuslab/ect run_ecm.sh L4-L6, ct_train.py",
               {"method": "ect", "ect_stages": 8, "steps": 200_000, "batch_size": 128, "lr": 1e-4, "optimizer": "radam",
                "weight_decay": 0.0, "grad_clip": 0.0, "dropout": 0.2, "ema_rates": (0.9999,), "precision": "float32",
                "xflip": False, "init_from_teacher": True}),
        Recipe("digits-teacher", "the shipped digits EDM teacher", "scripts/train_digits.sh",
               {"method": "edm", "preset": "digits16", "steps": 800, "batch_size": 128, "lr": 5e-4, "warmup_steps": 200,
                "ema_rates": (0.999,)}),
        Recipe("digits-cd", "the shipped digits CD model (from digits-teacher)", "scripts/train_digits.sh",
               {"method": "cd", "init_from_teacher": True, "num_scales": 18, "target_mu": 0.95, "distance": "l2",
                "solver": "heun", "steps": 1000, "batch_size": 64, "lr": 1e-4, "ema_rates": (0.999,)}),
        Recipe("digits-ict", "a small iCT digits model in minutes (README)", "README.md, Training",
               {"method": "ict", "steps": 400, "batch_size": 64, "lr": 5e-4}),
        Recipe("toy-ict", "iCT on a 2-D point set (README; tests/test_train_toy.py)", "README.md, Training",
               {"method": "ict", "steps": 2000, "batch_size": 256, "lr": 1e-3, "s1": 160}),
    ]
    return {r.name: r for r in found}


RECIPES: dict[str, Recipe] = _recipes()


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise InvalidInputError(f"recipe: {name!r} is not one of {', '.join(RECIPES)}")
    return RECIPES[name]
