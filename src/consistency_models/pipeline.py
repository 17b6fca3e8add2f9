"""`ConsistencyModelPipeline`: network + parametrization + sampler + image conversion, inference only.

Call-compatible with diffusers' `ConsistencyModelPipeline`, and reads and writes the same
folders. Where diffusers falls short this one differs: random class labels come from the
given generator, latents may have any channel count the model has, and `timesteps` or
`sigmas` simply override `num_inference_steps`.

The pipeline composes parts that live elsewhere: the preconditioned model `denoiser` (f for a
consistency model, D for an EDM denoiser; `parametrization.py`), the sampler of that
kind with its defaults (`kinds/`), the fast paths (`fast_paths.py`) and
the folder format (`io/pipeline_folder.py`).
"""

from __future__ import annotations

import copy
import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from .distributed import default_device, existing_device
from .errors import InvalidInputError, is_integer
from .fast_paths import FastPaths
from .io.file_mapping import mapped_storages, release_file
from .io.hub_upload import check_push_options, hub_client, push_folder
from .io.images import pil_image, to_uint8
from .io.pipeline_folder import (
    TRIGFLOW_SCHEDULER_CLASS,
    PipelineParts,
    load_pipeline_folder,
    model_index,
    new_folder,
    require_new_folder,
    save_pipeline_folder,
    trigflow_settings,
)
from .io.shards import DEFAULT_MAX_SHARD_SIZE
from .kinds import SCHEDULER_CLASS, default_kind, get_kind, kind_of_scheduler
from .networks import UNetModel, preset
from .outputs import BaseOutput
from .parametrization import Preconditioned
from .sampling import Generator, check_generator, randn
from .schedule import NoiseLevels, SchedulerConfig
from .scheduler import CMStochasticIterativeScheduler

OUTPUT_TYPES = ("pil", "np", "pt")
MAX_BATCH = 1 << 20  # the most samples one call makes


@dataclass
class ImagePipelineOutput(BaseOutput):
    """`.images`: PIL images, an NHWC float array or an NCHW tensor in [0, 1]; raw (N, dim) for points.
    Also `out[0]`, `out["images"]` and `out.to_tuple()`, as diffusers' outputs; `class_labels`
    (conditional models) comes second."""

    images: Any
    class_labels: torch.Tensor | None = None


def _dtype_argument(dtype: torch.dtype | dict | None, torch_dtype: torch.dtype | None) -> torch.dtype | None:
    """diffusers' `dtype=` (a dtype, or {"unet": …, "default": …}) or its older `torch_dtype=`."""
    if isinstance(dtype, dict):
        dtype = dtype.get("unet", dtype.get("default"))
    if dtype is not None and torch_dtype is not None and dtype != torch_dtype:
        raise InvalidInputError(f"dtype: {dtype} and torch_dtype={torch_dtype} disagree; give one of them")
    chosen = dtype if dtype is not None else torch_dtype
    if chosen is not None and not isinstance(chosen, torch.dtype):
        raise InvalidInputError(f"dtype: {chosen!r} is not a torch dtype (e.g. torch.float16)")
    return chosen


def _device_argument(device: str | torch.device | None,
                     device_map: str | torch.device | None) -> str | torch.device | None:
    """`device`, or diffusers' `device_map` for a one-network pipeline: a device, or "balanced"/"auto"
    (the GPU when there is one, else the CPU)."""
    if device_map is None:
        return device
    if device is not None:
        raise InvalidInputError(f"device_map: give device={device!r} or device_map={device_map!r}, not both")
    if device_map in ("balanced", "auto"):
        return default_device()
    if isinstance(device_map, (str, torch.device)):
        return device_map
    raise InvalidInputError(f"device_map: {device_map!r} is not allowed; this pipeline has one network: give a device "
                            "such as 'cuda' or 'cpu', or 'balanced'")


def _carried_kind(scheduler: Any) -> str:
    """The kind a scheduler carries (it was read with a pipeline folder, or is a pipeline's), else its class's."""
    return getattr(scheduler, "parametrization", None) or kind_of_scheduler(type(scheduler).__name__).name


def _check_network(unet: torch.nn.Module) -> None:
    if not hasattr(getattr(unet, "config", None), "sample_shape"):  # e.g. diffusers' UNet2DModel
        raise InvalidInputError(f"unet: a {type(unet).__name__} is not a network of this package; save it with its "
                                "pipeline's save_pretrained and load that folder with "
                                "ConsistencyModelPipeline.from_pretrained, which reads diffusers' weights")


class ConsistencyModelPipeline:
    """One-step and multistep sampling from a consistency model (or an EDM denoiser).

    Public parts: `unet` (the network), `scheduler` (its sampling settings, diffusers' scheduler
    API), `parametrization` ("consistency" or "edm"), `denoiser` (the network preconditioned as
    f(x, σ) or D(x, σ), what editing and generation evaluate) and `sampler`. A diffusers
    `CMStochasticIterativeScheduler` may be given as the scheduler: only its config is read.
    """

    _optional_components: list[str] = []

    def __init__(
        self,
        unet: torch.nn.Module,
        scheduler: CMStochasticIterativeScheduler | None = None,
        parametrization: str | None = None,  # a kind (kinds/); default: the scheduler's ("trigflow" for an SCMScheduler)
    ) -> None:
        _check_network(unet)
        scheduler = scheduler or CMStochasticIterativeScheduler()
        self.fast_paths = FastPaths()
        self.progress_bar_config: dict[str, Any] = {}
        self._unet = unet.eval()  # inference only: dropout off
        self._use(scheduler, parametrization or _carried_kind(scheduler))

    def _use(self, scheduler: CMStochasticIterativeScheduler, parametrization: str) -> None:
        """Sample `self._unet` as a model of kind `parametrization` with `scheduler`'s settings: this
        package's scheduler (it holds any kind's settings) or the class the kind's folders name."""
        self.kind = get_kind(parametrization)
        name = type(scheduler).__name__
        if name not in (SCHEDULER_CLASS, self.kind.scheduler_class):
            raise InvalidInputError(f"scheduler: {name} does not sample this pipeline's model ({self.kind.summary}); "
                                    f"give a {SCHEDULER_CLASS}")
        if _carried_kind(scheduler) != parametrization:
            scheduler = copy.copy(scheduler)   # a copy that carries this pipeline's kind (the given one is left as is)
            scheduler.parametrization = parametrization
        self._scheduler = scheduler
        self.parametrization = parametrization
        if type(scheduler).__name__ == TRIGFLOW_SCHEDULER_CLASS:
            cfg = trigflow_settings(dict(scheduler.config))
        else:
            cfg = SchedulerConfig.from_dict(scheduler.config)
        self._sampling_config = cfg
        self.denoiser: Preconditioned = self.kind.wrapper(self._unet, cfg.sigma_data, cfg.sigma_min)
        self.sampler = self.kind.sampler
        self.fast_paths.reset()

    @property
    def unet(self) -> torch.nn.Module:
        return self._unet

    @unet.setter
    def unet(self, unet: torch.nn.Module) -> None:
        """`pipe.unet = network`, as in diffusers: sampling uses it from the next call on."""
        _check_network(unet)
        self._unet = unet.eval()
        if self.fast_paths.fast_kernels_asked:
            self.fast_paths.set_fast_kernels(unet)
        self._use(self._scheduler, self.parametrization)

    @property
    def scheduler(self) -> CMStochasticIterativeScheduler:
        return self._scheduler

    @scheduler.setter
    def scheduler(self, scheduler: CMStochasticIterativeScheduler) -> None:
        """`pipe.scheduler = Scheduler.from_config(pipe.scheduler.config, …)`, as in diffusers:
        sampling follows the new scheduler's settings from the next call on. The model stays what it
        is (a `from_config` copy carries no kind); a scheduler of a class made for other models is
        refused. Like the constructor, the pipeline holds a copy that carries its kind where the given
        scheduler does not (a diffusers scheduler, or ours made by `from_config`, for a kind other
        than the consistency model)."""
        self._use(scheduler, self.parametrization)

    @property
    def model(self) -> Preconditioned:
        """The old name of `denoiser`, kept for this release."""
        return self.denoiser

    @property
    def sampling_config(self) -> SchedulerConfig:
        """The model's sampling settings: grid N, σ range, σ_data, ρ, re-noising scale, clipping."""
        return self._sampling_config

    @property
    def components(self) -> dict[str, Any]:
        """{"unet": …, "scheduler": …}, as diffusers' pipelines: `type(pipe)(**pipe.components)` is a copy."""
        return {"unet": self.unet, "scheduler": self.scheduler}

    # -- loading and saving -------------------------------------------------------------
    @classmethod
    def from_parts(cls, parts: PipelineParts) -> "ConsistencyModelPipeline":
        scheduler = CMStochasticIterativeScheduler(parts.scheduler_config)
        scheduler.parametrization = parts.parametrization
        return cls(parts.network, scheduler, parts.parametrization)

    @classmethod
    def from_pretrained(
        cls,
        path_or_id: str | os.PathLike,
        torch_dtype: torch.dtype | None = None,
        device: str | torch.device | None = None,
        *,
        dtype: torch.dtype | dict[str, torch.dtype] | None = None,
        variant: str | None = None,
        fast_kernels: bool = True,
        use_safetensors: bool | None = None,
        device_map: str | torch.device | None = None,
        unet: torch.nn.Module | None = None,
        scheduler: CMStochasticIterativeScheduler | None = None,
        low_cpu_mem_usage: bool = True,
        **download: Any,
    ) -> "ConsistencyModelPipeline":
        """Load a diffusers pipeline folder, an embedded model by name, or a Hub id when online.

        As diffusers' `from_pretrained`: `dtype` (a dtype or {"unet": …, "default": …};
        `torch_dtype` is its older name, kept); `variant` loads
        `unet/diffusion_pytorch_model.<variant>.safetensors`; `use_safetensors` (None: .safetensors,
        else .bin; True/False: only that format); `unet=` / `scheduler=` replace a component (a
        given unet is neither moved nor cast, and the folder's weights are not read); `device_map`
        a device ("cuda", "cpu") or "balanced"/"auto" (the one GPU when there is one, else the CPU:
        this pipeline has one network); `low_cpu_mem_usage` is accepted and changes nothing (no
        random initialization is drawn, and each weight is copied once from the file into its final
        dtype and layout, `io/file_mapping.py`); `revision`, `cache_dir`, `token`, `local_files_only`,
        `force_download`, `proxies` go to huggingface_hub for a Hub id. The fast kernels are on
        (`enable_fast_kernels`: Winograd and channels_last for wide networks on CPU, agreeing with
        the plain float32 path to ~1e-6; in a given unet too); `fast_kernels=False` turns them off."""
        chosen = _dtype_argument(dtype, torch_dtype)
        device = _device_argument(device, device_map)
        if unet is not None and (chosen is not None or device is not None):
            raise InvalidInputError("unet: a given unet is used as it is (diffusers neither moves nor casts it); "
                                    "drop dtype/device/device_map, or call .to(...) on the pipeline")
        _switch(low_cpu_mem_usage, "low_cpu_mem_usage")
        _switch(fast_kernels, "fast_kernels")
        parts = load_pipeline_folder(path_or_id, variant, use_safetensors, unet, **download)
        mapped = mapped_storages(parts.network) if unet is None else set()  # the file's (`io/file_mapping.py`)
        pipe = cls.from_parts(parts) if scheduler is None else cls(parts.network, scheduler, parts.parametrization)
        pipe.to(device=device, dtype=chosen).enable_fast_kernels(fast_kernels)
        release_file(pipe.unet, mapped)  # what no conversion copied: nothing keeps the file mapped
        pipe._name_or_path = path_or_id   # as given, as diffusers keeps it
        return pipe

    @classmethod
    def from_preset(
        cls,
        name: str,
        num_train_timesteps: int = 40,
        seed: int = 0,
        **overrides: Any,
    ) -> "ConsistencyModelPipeline":
        """An untrained consistency model of a network preset (`networks.PRESETS`), weights seeded by
        `seed`; `overrides` replace preset fields (e.g. num_classes=None for an unconditional model)."""
        try:
            config = preset(name, **overrides)
        except ValueError as exc:
            raise InvalidInputError(str(exc)) from None
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            unet = UNetModel(config)
        return cls(unet, CMStochasticIterativeScheduler(num_train_timesteps=num_train_timesteps))

    def parts(self) -> PipelineParts:
        """The network (unwrapped from torch.compile: `pipe.unet = torch.compile(pipe.unet)` saves as
        the plain network), the sampling settings and the kind."""
        return PipelineParts(getattr(self.unet, "_orig_mod", self.unet), self.sampling_config, self.parametrization)

    def save_pretrained(self, path: str | os.PathLike, safe_serialization: bool = True,
                        variant: str | None = None, max_shard_size: int | str | None = DEFAULT_MAX_SHARD_SIZE,
                        push_to_hub: bool = False, *, repo_id: str | None = None, commit_message: str | None = None,
                        private: bool | None = None, token: str | None = None, create_pr: bool = False) -> None:
        """Write a folder that diffusers' `ConsistencyModelPipeline.from_pretrained` loads, as diffusers writes
        it: safetensors weights, or with `safe_serialization=False` unet/diffusion_pytorch_model.bin (a
        plain tensor state dict saved with torch.save, read back with `torch.load(weights_only=True)`);
        `variant` names them as diffusers does (diffusion_pytorch_model.fp16.safetensors); weights larger
        than `max_shard_size` (bytes, or e.g. "5GB", "500MB"; diffusers' default "10GB") are split into
        shards with an index, named and split as diffusers does. Weights of the other format, or sharded
        otherwise, left by an earlier save into the same folder are removed. With `push_to_hub`, the
        folder is then uploaded to `repo_id` (default: the folder's name), as `push_to_hub` does;
        the repository's own card is kept (the folder's is not uploaded over it)."""
        check_push_options(repo_id, private, create_pr, push_to_hub, required=False)
        if push_to_hub:
            hub_client()  # one-line errors before anything is written
        save_pipeline_folder(path, self.parts(), variant, safe_serialization, max_shard_size)
        if push_to_hub:
            push_folder(Path(path), repo_id or Path(os.path.abspath(path)).name, self.parametrization, variant,
                        commit_message, private, token, create_pr)

    def push_to_hub(self, repo_id: str, commit_message: str | None = None, private: bool | None = None,
                    token: str | None = None, create_pr: bool = False, safe_serialization: bool = True,
                    variant: str | None = None, max_shard_size: int | str | None = DEFAULT_MAX_SHARD_SIZE) -> Any:
        """Upload the pipeline to the Hugging Face Hub as diffusers' `push_to_hub`: `repo_id`
        ("owner/name", or "name" in your namespace) is created if missing, the folder
        `save_pretrained` writes goes up (`huggingface_hub.upload_folder`), with a model card when
        the repository has none; the variant's weights of an earlier push in another layout are
        deleted from it. Returns huggingface_hub's CommitInfo. Needs `pip install "consistency-models[hub]"`
        and a token (`hf auth login`, or `token=`)."""
        hub_client()
        check_push_options(repo_id, private, create_pr)
        with tempfile.TemporaryDirectory() as tmp:  # save_pipeline_folder checks its own arguments first
            folder = Path(tmp) / "pipeline"
            save_pipeline_folder(folder, self.parts(), variant, safe_serialization, max_shard_size)
            return push_folder(folder, repo_id, self.parametrization, variant, commit_message, private, token,
                               create_pr)

    def to(self, *args: str | torch.device | torch.dtype, device: str | torch.device | None = None,
           dtype: torch.dtype | None = None) -> ConsistencyModelPipeline:
        """Move the network: `to("cuda")`, `to(torch.float16)`, `to("cuda", torch.float16)` or by keyword.
        A bfloat16/float16 `dtype` is mixed precision: the network's convolutions, matmuls and
        attention run in it, GroupNorm, the skip path c_skip·x and the combination c_skip·x + c_out·F
        in float32 (`Preconditioned`)."""
        for arg in args:
            if isinstance(arg, torch.dtype):
                dtype = arg
            else:
                device = arg
        if device is not None:
            existing_device(device)
        if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise InvalidInputError(f"dtype: {dtype!r} is not allowed; use torch.float32, torch.float16 or torch.bfloat16")
        self.unet.to(device=device, dtype=dtype)
        self.fast_paths.moved(self.unet)
        return self

    # -- fast paths (fast_paths.py) -------------------------------------------------------
    def enable_fast_kernels(self, enabled: bool = True) -> ConsistencyModelPipeline:
        """Winograd F(2×2, 3×3) for the wide 3×3 convolutions on CPU and channels_last weights and
        activations for wide networks (`UNetModel.use_fast_kernels`). Agrees with the default
        float32 path to ~1e-5; a point model (MLP) is left as it is."""
        self.fast_paths.set_fast_kernels(self.unet, _switch(enabled))
        return self

    def compile(self, enabled: bool = True, **options: Any) -> ConsistencyModelPipeline:
        """Sample through `torch.compile(self.denoiser, fullgraph=True, dynamic=False, **options)`: one
        graph for every σ of consistency sampling (EDM/Heun sampling stays eager). Inductor's freezing
        is on (CPU and CUDA) unless `options` say otherwise or give a `mode`: the weights become
        constants of the graph, so call compile() again after changing them in place. E.g.
        `compile(options={"max_autotune": True})` also benchmarks kernel choices (minutes). Compilation happens on
        the first call for each batch shape and dtype."""
        self.fast_paths.set_compile(_switch(enabled), **options)
        return self

    def enable_cuda_graph(self, enabled: bool = True) -> ConsistencyModelPipeline:
        """On CUDA, capture the whole consistency sampling loop as one CUDA graph, the first time a
        batch shape, schedule and label shape is seen, and replay it on later calls (same images as
        without). Calls with a `callback`, EDM models and other devices run without it."""
        self.fast_paths.set_cuda_graph(_switch(enabled))
        return self

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """The shape of one sample: (C, H, W) for a UNet, (dim,) for a point model (MLP)."""
        return tuple(self.unet.config.sample_shape)

    @property
    def is_image_model(self) -> bool:
        return len(self.sample_shape) == 3

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    def set_progress_bar_config(self, **kwargs: Any) -> None:
        self.progress_bar_config.update(kwargs)

    def progress_bar(self, iterable: Iterable | None = None, total: int | None = None, desc: str | None = None) -> tqdm:
        """A bar as configured by `set_progress_bar_config`, over `iterable` or of `total` steps, as
        diffusers' `progress_bar(iterable=None, total=None)`; a bar of one step or none stays hidden
        unless the configuration says otherwise."""
        if iterable is not None:
            return tqdm(iterable, **{"desc": desc, **self.progress_bar_config})
        if not is_integer(total) or total < 0:
            raise InvalidInputError(f"total: {total!r} is not allowed; give an iterable or a number of steps")
        return tqdm(total=total, **{"disable": total <= 1, "desc": desc, "leave": False, **self.progress_bar_config})

    @staticmethod
    def numpy_to_pil(images: np.ndarray) -> list[Image.Image]:
        """diffusers' helper: images in [0, 1], (N, H, W, C) or one (H, W, C), as PIL images (one
        channel: mode L), rounded to the nearest of 256 levels."""
        images = np.asarray(images)
        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
            raise InvalidInputError(f"images: shape {images.shape} is not (N, H, W, C) with C = 1, 3 or 4")
        return [pil_image(a) for a in to_uint8(images)]

    @property
    def config(self) -> Mapping[str, Any]:
        """What diffusers' `pipe.config` holds: each component's (library, class), as model_index.json
        names them, and `_name_or_path` (None: built in memory); read-only."""
        index = model_index(self.kind.name)
        return MappingProxyType({"unet": tuple(index["unet"]), "scheduler": tuple(index["scheduler"]),
                                 "_name_or_path": self.name_or_path})

    @property
    def name_or_path(self) -> str | os.PathLike | None:
        """The folder, embedded name or Hub id the pipeline was loaded from (None: built in memory)."""
        return getattr(self, "_name_or_path", None)

    @contextmanager
    def progress_bar_off(self) -> Iterator[None]:
        """No per-call progress bar inside the block (for callers that show one bar for a whole run)."""
        saved = dict(self.progress_bar_config)
        self.progress_bar_config["disable"] = True
        try:
            yield
        finally:
            self.progress_bar_config = saved

    # -- inputs -------------------------------------------------------------------------
    def prepare_class_labels(
        self, batch_size: int, class_labels: torch.Tensor | Sequence[int] | int | None, generator: Generator
    ) -> torch.Tensor | None:
        """Validated labels on the model's device; random ones come from `generator`."""
        num_classes = self.unet.config.num_classes
        if num_classes is None:
            if class_labels is not None:
                raise InvalidInputError("class_labels: this model is unconditional and takes no class labels")
            return None
        if class_labels is None:
            return self._random_labels(batch_size, num_classes, generator).to(self.device)
        try:
            labels = torch.as_tensor(class_labels).reshape(-1)
        except (TypeError, ValueError, RuntimeError):
            raise InvalidInputError(f"class_labels: {class_labels!r} must be integers in [0, {num_classes - 1}]") from None
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise InvalidInputError(f"class_labels: {labels.tolist()} must be integers in [0, {num_classes - 1}]")
        labels = labels.long()
        if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
            bad = sorted({v for v in labels.tolist() if not 0 <= v < num_classes})
            raise InvalidInputError(f"class_labels: {', '.join(map(str, bad))} must be integers in "
                                    f"[0, {num_classes - 1}]")
        if labels.numel() == 1:
            labels = labels.expand(batch_size)
        if labels.numel() != batch_size:
            raise InvalidInputError(
                f"class_labels: got {labels.numel()} labels for a batch of {batch_size}; give one or one per sample"
            )
        return labels.to(self.device)

    @staticmethod
    def _random_labels(batch_size: int, num_classes: int, generator: Generator) -> torch.Tensor:
        """Uniform labels from `generator` (one draw per generator when given a list)."""
        check_generator(generator)
        if isinstance(generator, (list, tuple)):
            return torch.cat([torch.randint(0, num_classes, (1,), generator=g, device=g.device) for g in generator])
        gen_device = generator.device if generator is not None else "cpu"
        return torch.randint(0, num_classes, (batch_size,), generator=generator, device=gen_device)

    def prepare_latents(self, batch_size: int, latents: torch.Tensor | None, generator: Generator) -> torch.Tensor:
        """Unit-variance noise of the model's shape (float32), to be scaled by σ_max."""
        shape = (batch_size, *self.sample_shape)
        if latents is None:
            return randn(shape, generator, device=self.device)
        if not torch.is_tensor(latents):
            hint = "; give torch.from_numpy(latents)" if isinstance(latents, np.ndarray) else ""
            raise InvalidInputError(f"latents: a {type(latents).__name__} is not a torch.Tensor{hint}")
        if tuple(latents.shape) != shape:
            raise InvalidInputError(f"latents: shape {tuple(latents.shape)} does not match the expected {shape}")
        return latents.to(device=self.device, dtype=torch.float32)

    def noise_schedule(self, levels: NoiseLevels) -> list[float]:
        """The σs this model samples at for `levels` (its sampler's default when nothing is given)."""
        return self.sampler.schedule(levels, self.sampling_config)

    def _check_call(self, batch_size: int, generator: Generator, output_type: str, callback_steps: int = 1) -> int:
        """Refuse bad call arguments in one line; returns batch_size as a Python int."""
        if not is_integer(callback_steps) or callback_steps < 1:
            raise InvalidInputError(f"callback_steps: {callback_steps!r} must be a positive integer")
        if output_type not in OUTPUT_TYPES:
            raise InvalidInputError(f"output_type: {output_type!r} is not one of {', '.join(OUTPUT_TYPES)}")
        if output_type == "pil" and not self.is_image_model:
            raise InvalidInputError("output_type: 'pil' needs an image model; this model makes points, use 'np' or 'pt'")
        if not is_integer(batch_size) or not 1 <= batch_size <= MAX_BATCH:
            raise InvalidInputError(f"batch_size: {batch_size!r} must be an integer from 1 to {MAX_BATCH}")
        check_generator(generator)
        if isinstance(generator, (list, tuple)) and len(generator) != batch_size:
            raise InvalidInputError(
                f"generator: got a list of {len(generator)} generators for batch_size={batch_size}; give one per sample"
            )
        return int(batch_size)

    # -- sampling -----------------------------------------------------------------------
    @torch.no_grad()
    def __call__(
        self,
        batch_size: int = 1,
        class_labels: torch.Tensor | Sequence[int] | int | None = None,
        num_inference_steps: int | None = None,
        timesteps: Sequence[int] | None = None,
        generator: Generator = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
        callback_steps: int = 1,
        sigmas: Sequence[float] | None = None,
    ) -> ImagePipelineOutput | tuple:
        """Sample `batch_size` images; `callback(step, timestep, x)` after every `callback_steps`-th
        step (the timestep a 0-d tensor, as diffusers passes it). The parameters up to
        `callback_steps` are diffusers', in its order (positional calls mean the same); `sigmas`,
        the noise levels themselves instead of grid `timesteps`, is ours.

        A consistency model samples with Algorithm 1 (default: one step). An EDM denoiser
        (`parametrization="edm"`, e.g. a teacher) samples with the deterministic Heun sampler
        on the N-point Karras grid ending at σ = 0 (default N = 18, 2N − 1 evaluations).
        """
        batch_size = self._check_call(batch_size, generator, output_type, callback_steps)
        if callback is not None and not callable(callback):
            raise InvalidInputError(f"callback: {callback!r} is not callable; give a function (step, timestep, sample)")
        callback_steps = int(callback_steps)
        schedule = self.noise_schedule(NoiseLevels.of(num_inference_steps, timesteps, sigmas))
        shown = self._show_schedule(schedule, timesteps, sigmas)
        noise = self.prepare_latents(batch_size, latents, generator)
        labels = self.prepare_class_labels(batch_size, class_labels, generator)
        x = self.sample(noise * self.sampler.initial_scale(schedule, self.sampling_config), schedule, labels,
                        generator, callback, callback_steps)
        if shown:
            self.scheduler._step_index = len(schedule) - 1   # as diffusers' last `step` leaves it
        images = self._convert(x, output_type)
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images, class_labels=labels)

    def _show_schedule(self, schedule: list[float], timesteps: Sequence[int] | None,
                       sigmas: Sequence[float] | None) -> bool:
        """As diffusers' pipeline leaves it: `scheduler.timesteps`/`.sigmas` those of the call (set by
        `set_timesteps`, for code that reads them in a callback or after), for a consistency model
        sampled on its grid (the sampling itself does not read them); whether it did so."""
        if self.kind is not default_kind() or sigmas is not None:
            return False
        if timesteps is not None:
            self.scheduler.set_timesteps(timesteps=list(timesteps), device=self.device)
        else:
            self.scheduler.set_timesteps(num_inference_steps=len(schedule) - 1, device=self.device)
        return True

    def sample(
        self,
        x: torch.Tensor,
        schedule: list[float],
        labels: torch.Tensor | None = None,
        generator: Generator = None,
        callback: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
        callback_steps: int = 1,
    ) -> torch.Tensor:
        """Run the model's sampler from x (noise already scaled by schedule[0]) through the fast paths."""
        def user_callback(i: int, sigma: float, sample: torch.Tensor) -> None:
            if self.kind is default_kind():
                self.scheduler._step_index = i + 1   # diffusers' callback comes after scheduler.step
            if i % callback_steps == 0:
                t = self.sampler.timestep(sigma, self.sampling_config)
                callback(i, torch.tensor(t, dtype=torch.float64, device=sample.device), sample)

        with self.progress_bar(total=len(schedule) - 1, desc="sampling") as bar:
            return self.fast_paths.sample(self.sampler, self.denoiser, self.unet, x, schedule, self.sampling_config,
                                          class_labels=labels, generator=generator,
                                          callback=None if callback is None else user_callback,
                                          progress=bar.update)

    def _convert(self, x: torch.Tensor, output_type: str) -> Any:
        """Samples in [−1, 1] → images in [0, 1] as `output_type`; points keep their coordinates."""
        if not self.is_image_model:
            return x if output_type == "pt" else x.cpu().numpy()
        images = (x / 2 + 0.5).clamp(0, 1).contiguous()
        if output_type == "pt":
            return images
        images = images.cpu().permute(0, 2, 3, 1).numpy()
        return [pil_image(a) for a in to_uint8(images)] if output_type == "pil" else images


def _switch(enabled: bool, name: str = "enabled") -> bool:
    """An on/off argument: True or False only ("no" would have turned a fast path on)."""
    if not isinstance(enabled, bool):
        raise InvalidInputError(f"{name}: {enabled!r} is not allowed; use True or False")
    return enabled


def create_model_folder(
    out_dir: str | os.PathLike,
    preset_name: str = "test",
    *,
    unconditional: bool = False,
    num_train_timesteps: int = 40,
    seed: int = 0,
) -> ConsistencyModelPipeline:
    """Write an untrained model of a preset to the new folder `out_dir` (`cm new`); returns it."""
    require_new_folder(out_dir, "out_dir")   # before the network is built
    overrides = {"num_classes": None} if unconditional else {}
    pipe = ConsistencyModelPipeline.from_preset(preset_name, num_train_timesteps, seed, **overrides)
    with new_folder(out_dir, "out_dir") as fresh:
        pipe.save_pretrained(fresh)
    return pipe
