"""Every setting of a training run, each with its help text beside it, checked once when made.

Method-specific settings (`distance`, `num_scales`, `s0`, ...) default to None: the method's
registry entry (`methods/`) supplies its defaults, and a setting the chosen method does not read
is refused instead of ignored. `cm train` builds its options from these fields (`cli/train.py`).
"""

from __future__ import annotations

import math
from dataclasses import MISSING, Field, asdict, dataclass, field, fields
from typing import Any, Callable, Sequence

from ..errors import InvalidInputError
from ..trigflow import TIME_INPUTS
from .distances import DISTANCES
from .jvp import JVP_MODES, JVP_PRECISIONS
from .methods import get_method, method_options
from .methods.registry import LPIPS_DISTANCES
from .optimizer import OPTIMIZERS

PRECISIONS = ("float32", "bfloat16", "float16")
SOLVERS = ("heun", "euler")
MU_FORMS = ("openai", "paper")


MAX_STEPS = 10**9     # 1,250 times OpenAI's 800k-step runs; beyond it a step counter is an overflow, not a plan
MAX_SCALES = 100_000  # discretisation steps N (s0, s1): the papers use at most 1,281; each level is a float


def setting(
    default: Any = MISSING,
    help: str = "",
    *,
    choices: Sequence[str] | Callable[[], Sequence[str]] | None = None,
    cli: bool = True,
    aliases: dict[str, Any] | None = None,
    default_factory: Callable[[], Any] | Any = MISSING,
) -> Field:
    """A config field with what `cm train --help` shows: help, choices (or a function giving them),
    `cli=False` for settings without an option, `aliases` = {"--flag": value stored} for old spellings."""
    metadata = {"help": help, "choices": choices, "cli": cli, "aliases": aliases or {}}
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def method_names() -> tuple[str, ...]:
    from .methods import METHODS

    return tuple(METHODS)


@dataclass
class TrainConfig:
    """A training run. `batch_size` is the global batch, whatever the number of processes."""

    method: str = setting(help="the training method", choices=method_names)
    data: str = setting(help="digits, digits:test, toy:mog8|moons|checkerboard, an image folder (class = "
                             "first-level subfolder), an EDM .zip, an ADM .npz (uint8 images) or an .npz of float "
                             "points (arr_0: (N, D), arr_1: optional labels)")
    out: str = setting(help="run folder (created; must be new unless --resume); also a pipeline folder")
    preset: str | None = setting(None, "network preset (default: from the data: tiny16, small32, mlp2d)")
    resolution: int | None = setting(None, "resize images to this size")
    use_labels: bool = setting(True, "class-conditional when the data has labels",
                               aliases={"--unconditional": False})
    xflip: bool = setting(False, "random horizontal flips")
    teacher: str | None = setting(None, "EDM denoiser folder (trained with --method edm, or converted)")
    init_from_teacher: bool | None = setting(None, "start the student from the teacher's weights")
    init_from: str | None = setting(None, "start from this pipeline folder's network (fine-tuning; same shape "
                                          "and classes)")
    batch_size: int = setting(64, "global batch size")
    steps: int = setting(10_000, "optimizer steps K")
    lr: float = setting(2e-4, "learning rate")
    optimizer: str = setting("radam", "optimizer", choices=OPTIMIZERS)
    weight_decay: float = setting(0.0, "weight decay (decoupled for adamw)")
    warmup_steps: int = setting(0, "linear learning-rate warm-up steps")
    grad_clip: float | None = setting(1.0, "max global gradient norm (0: off)")
    accumulation: int = setting(1, "micro-batches per optimizer step")
    ema_rates: tuple[float, ...] = setting(help="EMA rates of the weights, e.g. 0.999,0.9999 (the first is "
                                                "exported)", default_factory=lambda: (0.999,))
    precision: str = setting("float32", "autocast dtype of the forward", choices=PRECISIONS)
    dropout: float | None = setting(None, "override the preset's dropout")
    compile: bool | None = setting(None, "torch.compile the networks (the fast step; default: on CUDA yes, on the "
                                         "CPU no); the first step then compiles, minutes on a CPU")
    seed: int = setting(0, "seed of the weights, the data order and every noise draw")
    # Method-specific settings: None = the method's default (see methods/).
    distance: str | None = setting(None, "consistency distance; lpips (as OpenAI trains: average pools, resize "
                                         "to 224 below 256 px) and lpips_standard (the lpips package: max pools, "
                                         "always 224) need --lpips-vgg and --lpips-lin",
                                   choices=(*DISTANCES, *LPIPS_DISTANCES))
    lpips_vgg: str | None = setting(None, "VGG-16 weights file (torchvision layout) for lpips")
    lpips_lin: str | None = setting(None, "LPIPS linear-layer weights file (vgg.pth v0.1) for lpips")
    num_scales: int | None = setting(None, "grid size N")
    target_mu: float | None = setting(None, "target EMA rate mu")
    solver: str | None = setting(None, "teacher ODE step", choices=SOLVERS)
    s0: int | None = setting(None, "curriculum start (initial grid size term)")
    s1: int | None = setting(None, "curriculum end (final grid size term)")
    mu0: float | None = setting(None, "initial target EMA rate")
    mu_form: str | None = setting(None, "mu(k): OpenAI's code (N-1) or the paper (N)", choices=MU_FORMS)
    ect_stages: int | None = setting(None, "stages over the run")
    p_mean: float | None = setting(None, "mean of the log-sigma proposal tau ~ N(P_mean, P_std^2), t = arctan(e^tau/"
                                         "sigma_data)")
    p_std: float | None = setting(None, "std of the log-sigma proposal")
    tangent_warmup: int | None = setting(None, "tangent warm-up H: r = min(1, step/H) (0: none)")
    tangent_c: float | None = setting(None, "tangent normalisation g/(|g| + c)")
    adaptive_weight: bool | None = setting(None, "learn the weighting w(t) jointly (L = e^w/D |.|^2 - w)")
    time_input: str | None = setting(None, "the network's time input: t (the paper's c_noise(t) = t) or log_sigma "
                                           "(250 ln(sigma_d tan t), an EDM network's, kept by a student started "
                                           "from an EDM teacher)", choices=TIME_INPUTS)
    jvp: str | None = setting(None, "how dF/dt is computed: exact (forward-mode AD) or fd (float64 finite "
                                    "difference, a reference)", choices=JVP_MODES)
    jvp_precision: str | None = setting(None, "precision of the tangent pass (teacher velocity, JVP): run (the run's "
                                              "--precision; softmax and GroupNorm in float32) or float32 (autocast "
                                              "off)", choices=JVP_PRECISIONS)
    sigma_min: float = setting(0.002, "sigma_min (epsilon) of the noise levels")
    sigma_max: float = setting(80.0, "sigma_max (T) of the noise levels")
    sigma_data: float = setting(0.5, "sigma_data of the preconditioning")
    rho: float = setting(7.0, "rho of the Karras grid")
    # bookkeeping
    log_every: int = setting(50, "steps between lines of metrics.jsonl")
    save_every: int = setting(1000, "steps between checkpoints")
    sample_every: int = setting(1000, "steps between sample grids in samples/")
    keep: int = setting(3, "checkpoints kept")
    resume: bool = setting(False, "continue from the newest complete checkpoint")
    device: str | None = setting(None, "cpu, cuda or cuda:N (default: cuda when available)")
    tensorboard: bool = setting(False, "also log to RUN_DIR/tensorboard")
    progress: bool = setting(True, "show a progress bar")
    extra: dict = setting(help="free-form: the recipe a run came from; settings of methods registered outside "
                               "this package", cli=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.ema_rates = tuple(float(r) for r in self.ema_rates)
        self._check_values()
        self._apply_method()

    def _check_values(self) -> None:
        checks = [
            ("optimizer", self.optimizer in OPTIMIZERS, f"one of {', '.join(OPTIMIZERS)}"),
            ("precision", self.precision in PRECISIONS, f"one of {', '.join(PRECISIONS)}"),
            ("batch_size", self.batch_size >= 1, "a positive integer"),
            ("steps", 1 <= self.steps <= MAX_STEPS, f"an integer from 1 to {MAX_STEPS}"),
            ("resolution", self.resolution is None or self.resolution >= 1, "a positive integer"),
            ("warmup_steps", 0 <= self.warmup_steps <= MAX_STEPS, f"a number of steps from 0 to {MAX_STEPS}"),
            ("weight_decay", math.isfinite(self.weight_decay) and self.weight_decay >= 0, "a number >= 0"),
            ("dropout", self.dropout is None or 0 <= self.dropout < 1, "a probability in [0, 1)"),
            ("log_every", self.log_every >= 1, "a positive integer"),
            ("save_every", self.save_every >= 1, "a positive integer"),
            ("sample_every", self.sample_every >= 1, "a positive integer"),
            ("lr", math.isfinite(self.lr) and self.lr > 0, "a positive number"),
            ("grad_clip", self.grad_clip is None or (math.isfinite(self.grad_clip) and self.grad_clip >= 0),
             "a norm >= 0 (0: off)"),
            ("accumulation", self.accumulation >= 1 and self.batch_size % self.accumulation == 0,
             "a positive divisor of batch_size"),
            ("ema_rates", all(0 <= r < 1 for r in self.ema_rates), "rates in [0, 1)"),
            ("target_mu", self.target_mu is None or 0 <= self.target_mu < 1, "a rate in [0, 1)"),
            ("num_scales", self.num_scales is None or 2 <= self.num_scales <= MAX_SCALES, f"2 to {MAX_SCALES}"),
            ("s0", self.s0 is None or 1 <= self.s0 <= MAX_SCALES, f"an integer from 1 to {MAX_SCALES}"),
            ("s1", self.s1 is None or 1 <= self.s1 <= MAX_SCALES, f"an integer from 1 to {MAX_SCALES}"),
            ("mu0", self.mu0 is None or 0 <= self.mu0 < 1, "a rate in [0, 1)"),
            ("ect_stages", self.ect_stages is None or self.ect_stages >= 1, "a positive integer"),
            ("p_mean", self.p_mean is None or math.isfinite(self.p_mean), "a finite number"),
            ("p_std", self.p_std is None or (math.isfinite(self.p_std) and self.p_std > 0), "a number > 0"),
            ("tangent_warmup", self.tangent_warmup is None or 0 <= self.tangent_warmup <= MAX_STEPS,
             f"a number of steps from 0 to {MAX_STEPS}"),
            ("tangent_c", self.tangent_c is None or (math.isfinite(self.tangent_c) and self.tangent_c > 0),
             "a number > 0"),
            ("jvp", self.jvp in (None, *JVP_MODES), " or ".join(JVP_MODES)),
            ("jvp_precision", self.jvp_precision in (None, *JVP_PRECISIONS), " or ".join(JVP_PRECISIONS)),
            ("time_input", self.time_input in (None, *TIME_INPUTS), " or ".join(TIME_INPUTS)),
            ("solver", self.solver in (None, *SOLVERS), " or ".join(SOLVERS)),
            ("mu_form", self.mu_form in (None, *MU_FORMS), " or ".join(MU_FORMS)),
            ("distance", self.distance in (None, *DISTANCES, *LPIPS_DISTANCES),
             f"one of {', '.join((*DISTANCES, *LPIPS_DISTANCES))}"),
            ("keep", self.keep >= 1, "at least 1"),
            ("seed", 0 <= self.seed < 2**32, "an integer from 0 to 4294967295"),
        ]
        for name, ok, allowed in checks:
            if not ok:
                raise InvalidInputError(f"{name}: {getattr(self, name)!r} is not allowed; use {allowed}")

    def _apply_method(self) -> None:
        """Refuse what the method does not read, fill in its defaults, check its teacher."""
        method = get_method(self.method)
        for name in sorted(method_options() - set(method.options)):
            if getattr(self, name) is not None:
                used = ", ".join(method.options) or "none"
                raise InvalidInputError(
                    f"{name}: {getattr(self, name)!r} is not used by --method {self.method} (its own settings: {used})"
                )
        if self.init_from_teacher is None:  # before the budget defaults, which may read it
            self.init_from_teacher = bool(self.teacher) and method.init_from_teacher and not self.init_from
        for name, value in method.defaults.items():  # plain values first: budget defaults may read them
            if getattr(self, name) is None and not callable(value):
                setattr(self, name, value)
        for name, value in method.defaults.items():
            if getattr(self, name) is None and callable(value):
                setattr(self, name, value(self))
        if (self.lpips_vgg or self.lpips_lin) and self.distance not in LPIPS_DISTANCES:
            raise InvalidInputError("lpips_vgg/lpips_lin: given, but --distance is not lpips or lpips_standard")
        if self.distance in LPIPS_DISTANCES and not (self.lpips_vgg and self.lpips_lin):
            raise InvalidInputError(f"distance: {self.distance} needs --lpips-vgg and --lpips-lin weight files "
                                    "(nothing is downloaded)")
        if method.teacher == "unused" and (self.teacher or self.init_from_teacher):
            raise InvalidInputError(f"teacher: --method {self.method} uses no teacher; to start from a saved "
                                    "network use --init-from")
        if self.init_from_teacher and not self.teacher:
            raise InvalidInputError("init_from_teacher: needs --teacher")
        if self.init_from and self.init_from_teacher:
            raise InvalidInputError("init_from: give --init-from or --init-from-teacher, not both")
        if self.init_from_teacher and self.dropout is None and method.student_dropout is not None:
            self.dropout = method.student_dropout

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ema_rates"] = list(self.ema_rates)
        return d

    @classmethod
    def from_recipe(cls, name: str, **settings: Any) -> "TrainConfig":
        """A published run's settings (`training/recipes.py`), with `settings` overriding them."""
        from .recipes import get_recipe

        recipe = get_recipe(name)
        merged = {**recipe.settings, **settings}
        merged["extra"] = {**merged.get("extra", {}), "recipe": name}
        return cls(**merged)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        """The config of a saved run. Settings of other methods, which older versions saved with
        their global defaults, are dropped."""
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        method = get_method(values.get("method", ""))
        for name in method_options() - set(method.options):
            values.pop(name, None)
        return cls(**values)

    # Settings that may change between a run and its resumption.
    RESUMABLE = ("resume", "out", "progress", "log_every", "save_every", "sample_every", "keep", "device",
                 "tensorboard", "compile")


def method_defaults_text(name: str) -> str:
    """'cd 18, ct 2': the defaults the registered methods give a method-specific setting."""
    from .methods import METHODS

    return ", ".join(f"{m.name} {m.defaults[name]}" for m in METHODS.values() if name in m.defaults)
