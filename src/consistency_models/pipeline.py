"""`ConsistencyModelPipeline`: network + parametrization + sampler + image conversion, inference only.

Call-compatible with diffusers' `ConsistencyModelPipeline`, and reads and writes the same
folders. Where diffusers falls short this one differs: random class labels come from the
given generator, latents may have any channel count the model has, and `timesteps` or
`sigmas` simply override `num_inference_steps`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from tqdm.auto import tqdm

from .errors import InvalidInputError
from .io.diffusers_format import load_network, read_model_index, save_network, write_model_index
from .io.hub import resolve_model_path
from .io.images import pil_image, to_uint8
from .networks.unet import UNetModel
from .parametrization import PARAMETRIZATIONS, Preconditioned, karras_sigmas
from .sampling import (
    CUDAGraphSampler,
    Generator,
    draw_step_noise,
    randn,
    resolve_sigmas,
    sample_consistency,
    sample_heun,
)
from .scheduler import CMStochasticIterativeScheduler

OUTPUT_TYPES = ("pil", "np", "pt")


@dataclass
class ImagePipelineOutput:
    """`.images`: PIL images, an NHWC float array or an NCHW tensor in [0, 1]; raw (N, dim) for points."""

    images: Any
    class_labels: torch.Tensor | None = None


class ConsistencyModelPipeline:
    """One-step and multistep sampling from a consistency model (or an EDM denoiser)."""

    def __init__(
        self,
        unet: UNetModel,
        scheduler: CMStochasticIterativeScheduler | None = None,
        parametrization: str = "consistency",
    ) -> None:
        if parametrization not in PARAMETRIZATIONS:
            raise InvalidInputError(
                f"parametrization: {parametrization!r} is not one of {', '.join(PARAMETRIZATIONS)}"
            )
        self.unet = unet.eval()  # inference only: dropout off
        self.scheduler = scheduler or CMStochasticIterativeScheduler()
        self.parametrization = parametrization
        cfg = self.scheduler.config
        self.model: Preconditioned = PARAMETRIZATIONS[parametrization](unet, cfg.sigma_data, cfg.sigma_min)
        self.progress_bar_config: dict[str, Any] = {}
        self._fast_kernels = False
        self._compile_options: dict[str, Any] | None = None  # set by compile()
        self._compiled: Callable[..., torch.Tensor] | None = None
        self._cuda_graph = False
        self._graph: CUDAGraphSampler | None = None

    # -- loading and saving -------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        path_or_id: str | os.PathLike,
        torch_dtype: torch.dtype | None = None,
        device: str | torch.device | None = None,
    ) -> "ConsistencyModelPipeline":
        """Load a diffusers pipeline folder (or a Hub id when online)."""
        folder = resolve_model_path(path_or_id)
        index = read_model_index(folder)
        unet = load_network(folder / "unet")
        scheduler = CMStochasticIterativeScheduler.from_pretrained(folder, subfolder="scheduler")
        pipe = cls(unet, scheduler, index.get("_parametrization", "consistency"))
        return pipe.to(device=device, dtype=torch_dtype)

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write a folder that diffusers' `ConsistencyModelPipeline.from_pretrained` loads."""
        folder = Path(path)
        if not folder.parent.is_dir():
            raise InvalidInputError(f"path: the folder {folder.parent} does not exist")
        folder.mkdir(exist_ok=True)
        save_network(self.unet, folder / "unet")
        self.scheduler.save_pretrained(folder / "scheduler")
        write_model_index(folder, self.parametrization)

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> ConsistencyModelPipeline:
        """Move the network; a bfloat16/float16 `dtype` is mixed precision: the network's convolutions,
        matmuls and attention run in it, GroupNorm, the skip path c_skip·x and the combination
        c_skip·x + c_out·F in float32 (`Preconditioned`)."""
        self.unet.to(device=device, dtype=dtype)
        if self._fast_kernels:  # what pays off depends on the device
            self.unet.use_fast_kernels()
        self._reset_fast_paths()
        return self

    # -- fast paths -----------------------------------------------------------------------
    def enable_fast_kernels(self, enabled: bool = True) -> ConsistencyModelPipeline:
        """Winograd F(2×2, 3×3) for the wide 3×3 convolutions on CPU and channels_last weights and
        activations for wide networks (`UNetModel.use_fast_kernels`). Agrees with the default
        float32 path to ~1e-5; a point model (MLP) is left as it is."""
        self._fast_kernels = enabled and hasattr(self.unet, "use_fast_kernels")
        if hasattr(self.unet, "use_fast_kernels"):
            self.unet.use_fast_kernels(enabled)
        self._reset_fast_paths()
        return self

    def compile(self, enabled: bool = True, **options: Any) -> ConsistencyModelPipeline:
        """Sample through `torch.compile(self.model, fullgraph=True, dynamic=False, **options)`: one
        graph for every σ of consistency sampling (EDM/Heun sampling stays eager). On CPU inductor's
        freezing is on unless `options` say otherwise: the weights become constants of the
        graph, so call compile() again after changing them in place. Compilation happens on
        the first call for each batch shape and dtype."""
        self._compile_options = ({"fullgraph": True, "dynamic": False, **options} if enabled else None)
        self._reset_fast_paths()
        return self

    def enable_cuda_graph(self, enabled: bool = True) -> ConsistencyModelPipeline:
        """On CUDA, capture the whole consistency sampling loop as one CUDA graph, the first time a
        batch shape, schedule and label shape is seen, and replay it on later calls (same images as
        without). Calls with a `callback`, EDM models and other devices run without it."""
        self._cuda_graph = enabled
        self._graph = None
        return self

    def _reset_fast_paths(self) -> None:
        """Compiled functions and captured graphs hold the old weights, dtypes and layouts: rebuild lazily."""
        self._compiled = None
        self._graph = None

    def _sampling_model(self) -> Callable[..., torch.Tensor]:
        """The consistency function the sampler calls: compiled when compile() was asked for."""
        if self._compile_options is None:
            return self.model
        if self._compiled is None:
            options = dict(self._compile_options)
            if self.device.type == "cpu":
                options["options"] = {"freezing": True, **options.get("options", {})}
            self._compiled = torch.compile(self.model, **options)
        return self._compiled

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """The shape of one sample: (C, H, W) for a UNet, (dim,) for a point model (MLP)."""
        cfg = self.unet.config
        if hasattr(cfg, "image_size"):
            return (cfg.in_channels, cfg.image_size, cfg.image_size)
        return (cfg.dim,)

    @property
    def is_image_model(self) -> bool:
        return len(self.sample_shape) == 3

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    def set_progress_bar_config(self, **kwargs: Any) -> None:
        self.progress_bar_config.update(kwargs)

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
            if isinstance(generator, (list, tuple)):
                labels = torch.cat([torch.randint(0, num_classes, (1,), generator=g, device=g.device) for g in generator])
            else:
                gen_device = generator.device if generator is not None else "cpu"
                labels = torch.randint(0, num_classes, (batch_size,), generator=generator, device=gen_device)
        else:
            try:
                labels = torch.as_tensor(class_labels).reshape(-1)
            except (TypeError, ValueError, RuntimeError):
                raise InvalidInputError(
                    f"class_labels: {class_labels!r} must be integers in [0, {num_classes - 1}]"
                ) from None
            if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
                raise InvalidInputError(f"class_labels: {labels.tolist()} must be integers in [0, {num_classes - 1}]")
            labels = labels.long()
            if labels.numel() == 1:
                labels = labels.expand(batch_size)
            if labels.numel() != batch_size:
                raise InvalidInputError(
                    f"class_labels: got {labels.numel()} labels for a batch of {batch_size}; give one or one per sample"
                )
            if labels.min() < 0 or labels.max() >= num_classes:
                raise InvalidInputError(
                    f"class_labels: {labels.tolist()} must be integers in [0, {num_classes - 1}]"
                )
        return labels.to(self.device)

    def prepare_latents(self, batch_size: int, latents: torch.Tensor | None, generator: Generator) -> torch.Tensor:
        """Unit-variance noise of the model's shape (float32), to be scaled by σ_max."""
        shape = (batch_size, *self.sample_shape)
        if latents is None:
            return randn(shape, generator, device=self.device)
        if tuple(latents.shape) != shape:
            raise InvalidInputError(f"latents: shape {tuple(latents.shape)} does not match the expected {shape}")
        return latents.to(device=self.device, dtype=torch.float32)

    # -- sampling -----------------------------------------------------------------------
    @torch.no_grad()
    def __call__(
        self,
        batch_size: int = 1,
        class_labels: torch.Tensor | Sequence[int] | int | None = None,
        num_inference_steps: int | None = None,
        timesteps: Sequence[int] | None = None,
        sigmas: Sequence[float] | None = None,
        generator: Generator = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback: Callable[[int, float, torch.Tensor], None] | None = None,
    ) -> ImagePipelineOutput | tuple:
        """Sample `batch_size` images; `callback(step, timestep, x)` after each step.

        A consistency model samples with Algorithm 1 (default: one step). An EDM denoiser
        (`parametrization="edm"`, e.g. a teacher) samples with the deterministic Heun sampler
        on the N-point Karras grid ending at σ = 0 (default N = 18, 2N − 1 evaluations).
        """
        if output_type not in OUTPUT_TYPES:
            raise InvalidInputError(f"output_type: {output_type!r} is not one of {', '.join(OUTPUT_TYPES)}")
        if output_type == "pil" and not self.is_image_model:
            raise InvalidInputError("output_type: 'pil' needs an image model; this model makes points, use 'np' or 'pt'")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise InvalidInputError(f"batch_size: {batch_size!r} must be a positive integer")
        if isinstance(generator, (list, tuple)) and len(generator) != batch_size:
            raise InvalidInputError(
                f"generator: got a list of {len(generator)} generators for batch_size={batch_size}; give one per sample"
            )
        cfg = self.scheduler.config
        edm = self.parametrization == "edm"
        if edm and timesteps is None and sigmas is None:
            steps = 18 if num_inference_steps is None else num_inference_steps
            if not isinstance(steps, int) or steps < 2:
                raise InvalidInputError(f"num_inference_steps: {steps!r} must be at least 2 for a diffusion (EDM) model")
            schedule = karras_sigmas(steps, cfg.sigma_min, cfg.sigma_max, cfg.rho).tolist() + [0.0]
        else:
            schedule = resolve_sigmas(
                1 if num_inference_steps is None else num_inference_steps, timesteps, sigmas,
                cfg.num_train_timesteps, cfg.sigma_min, cfg.sigma_max, cfg.rho,
            )
            if edm:  # the ODE runs down to σ = 0 instead of stopping at σ_min
                schedule[-1] = 0.0
        noise = self.prepare_latents(batch_size, latents, generator)
        labels = self.prepare_class_labels(batch_size, class_labels, generator)
        x = noise * schedule[0]

        user_callback = None
        if callback is not None:
            def user_callback(i: int, sigma: float, sample: torch.Tensor) -> None:
                callback(i, float(self.scheduler.sigma_to_t(max(sigma, 1e-44))), sample)

        bar_config = {"disable": len(schedule) <= 2, "desc": "sampling", "leave": False, **self.progress_bar_config}
        with tqdm(total=len(schedule) - 1, **bar_config) as bar:
            if edm:
                x = sample_heun(self.model, x, schedule, class_labels=labels, callback=user_callback,
                                progress=bar.update)
                x = x.clamp(-1, 1) if cfg.clip_denoised else x
            else:
                x = self._sample_consistency(x, schedule, labels, generator, user_callback, bar.update)
        if not self.is_image_model:  # points keep their coordinates
            images = x if output_type == "pt" else x.cpu().numpy()
            return ImagePipelineOutput(images=images, class_labels=labels) if return_dict else (images,)
        images = (x / 2 + 0.5).clamp(0, 1).contiguous()
        if output_type != "pt":
            images = images.cpu().permute(0, 2, 3, 1).numpy()
            if output_type == "pil":
                images = [pil_image(a) for a in to_uint8(images)]
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images, class_labels=labels)

    def _sample_consistency(
        self,
        x: torch.Tensor,
        schedule: list[float],
        labels: torch.Tensor | None,
        generator: Generator,
        callback: Callable[[int, float, torch.Tensor], None] | None,
        progress: Callable[[int], object],
    ) -> torch.Tensor:
        """Algorithm 1 through the fast paths that are on: channels_last, compiled model, CUDA graph."""
        cfg = self.scheduler.config
        options = {"s_noise": cfg.s_noise, "clip_denoised": cfg.clip_denoised,
                   "sigma_min": cfg.sigma_min, "sigma_max": cfg.sigma_max}
        if getattr(self.unet, "channels_last", False):
            x = x.contiguous(memory_format=torch.channels_last)
        model = self._sampling_model()
        if not (self._cuda_graph and x.device.type == "cuda" and callback is None):
            return sample_consistency(model, x, schedule, class_labels=labels, generator=generator,
                                      callback=callback, progress=progress, **options)
        steps = len(schedule) - 1
        noise = draw_step_noise(x.shape, steps, generator, x.device)
        key = CUDAGraphSampler.key_for(model, x, schedule, labels)
        if self._graph is None or self._graph.key != key:
            self._graph = None  # free the old graph's memory before capturing the new one
            self._graph = CUDAGraphSampler(model, x, schedule, labels, noise, **options)
        x = self._graph(x, labels, noise)
        progress(steps)
        return x
