"""Every setting of a training run, with the defaults each method uses."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from ..errors import InvalidInputError
from .optimizer import OPTIMIZERS

METHODS = ("edm", "cd", "ct", "ict", "ect")
PRECISIONS = ("float32", "bfloat16", "float16")

# Per-method defaults for settings left as None.
METHOD_DEFAULTS: dict[str, dict] = {
    "edm": {"distance": "l2"},
    "cd": {"distance": "l2"},
    "ct": {"distance": "l2", "s0": 2, "s1": 150, "mu0": 0.9},
    "ict": {"distance": "pseudo_huber", "s0": 10, "s1": 1280},
    "ect": {"distance": "pseudo_huber"},
}


@dataclass
class TrainConfig:
    """A training run. `batch_size` is the global batch, whatever the number of processes."""

    method: str                                   # edm | cd | ct | ict | ect
    data: str                                     # digits | digits:test | toy:NAME | folder | .zip | .npz
    out: str                                      # run folder (also a pipeline folder)
    preset: str | None = None                     # network preset; default chosen from the data
    resolution: int | None = None                 # resize images to this size
    use_labels: bool = True                       # class-conditional when the data has labels
    xflip: bool = False                           # random horizontal flips
    teacher: str | None = None                    # EDM denoiser folder (cd, ect)
    init_from_teacher: bool | None = None         # student starts as the teacher (default: ect yes, cd no)
    init_from: str | None = None                  # start from this pipeline folder's network (fine-tuning)
    batch_size: int = 64
    steps: int = 10_000                           # optimizer steps K
    lr: float = 2e-4
    optimizer: str = "radam"
    weight_decay: float = 0.0
    warmup_steps: int = 0                         # linear learning-rate warm-up
    grad_clip: float | None = 1.0                 # max global gradient norm; None = off
    accumulation: int = 1                         # micro-batches per optimizer step
    ema_rates: tuple[float, ...] = (0.999,)       # EMAs of the weights, apart from the target θ⁻
    precision: str = "float32"                    # autocast dtype of the forward
    dropout: float | None = None                  # override the preset's dropout
    seed: int = 0
    # method settings (None = the method's default)
    distance: str | None = None                   # l2 | l1 | pseudo_huber | lpips
    lpips_vgg: str | None = None                  # VGG-16 weights (torchvision layout) for lpips
    lpips_lin: str | None = None                  # LPIPS linear-layer weights (vgg.pth v0.1)
    num_scales: int = 18                          # CD grid size N
    target_mu: float = 0.95                       # CD target EMA rate μ
    solver: str = "heun"                          # CD teacher ODE step: heun | euler
    s0: int | None = None                         # CT/iCT curriculum start
    s1: int | None = None                         # CT/iCT curriculum end
    mu0: float | None = None                      # CT initial target EMA rate
    mu_form: str = "openai"                       # CT μ(k): openai (N−1) or paper (N)
    ect_stages: int = 8                           # ECT: stages over the run
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    sigma_data: float = 0.5
    rho: float = 7.0
    # bookkeeping
    log_every: int = 50
    save_every: int = 1000
    sample_every: int = 1000
    keep: int = 3                                 # checkpoints kept
    resume: bool = False
    device: str | None = None
    tensorboard: bool = False
    progress: bool = True
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.ema_rates = tuple(float(r) for r in self.ema_rates)
        checks = [
            ("method", self.method in METHODS, f"one of {', '.join(METHODS)}"),
            ("optimizer", self.optimizer in OPTIMIZERS, f"one of {', '.join(OPTIMIZERS)}"),
            ("precision", self.precision in PRECISIONS, f"one of {', '.join(PRECISIONS)}"),
            ("batch_size", self.batch_size >= 1, "a positive integer"),
            ("steps", self.steps >= 1, "a positive integer"),
            ("lr", self.lr > 0, "a positive number"),
            ("accumulation", self.accumulation >= 1 and self.batch_size % self.accumulation == 0,
             "a positive divisor of batch_size"),
            ("ema_rates", all(0 <= r < 1 for r in self.ema_rates), "rates in [0, 1)"),
            ("target_mu", 0 <= self.target_mu < 1, "a rate in [0, 1)"),
            ("num_scales", self.num_scales >= 2, "at least 2"),
            ("solver", self.solver in ("heun", "euler"), "heun or euler"),
            ("mu_form", self.mu_form in ("openai", "paper"), "openai or paper"),
            ("keep", self.keep >= 1, "at least 1"),
        ]
        for name, ok, allowed in checks:
            if not ok:
                raise InvalidInputError(f"{name}: {getattr(self, name)!r} is not allowed; use {allowed}")
        if self.distance == "lpips" and not (self.lpips_vgg and self.lpips_lin):
            raise InvalidInputError("distance: lpips needs --lpips-vgg and --lpips-lin weight files (nothing is downloaded)")
        if self.method == "ect" and not self.teacher:
            raise InvalidInputError("teacher: ECT tunes a pretrained EDM denoiser; pass --teacher")
        for key, value in METHOD_DEFAULTS[self.method].items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        if self.init_from_teacher is None:
            self.init_from_teacher = self.method == "ect" and not self.init_from
        if self.init_from and self.init_from_teacher:
            raise InvalidInputError("init_from: give --init-from or --init-from-teacher, not both")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ema_rates"] = list(self.ema_rates)
        return d

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    # Settings that may change between a run and its resumption.
    RESUMABLE = ("resume", "out", "progress", "log_every", "save_every", "sample_every", "keep", "device",
                 "tensorboard")
