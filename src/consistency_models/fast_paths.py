"""The fast sampling paths a pipeline can switch on, kept apart from what it samples.

- fast kernels: Winograd F(2×2, 3×3) for the wide 3×3 convolutions on CPU and channels_last
  weights and activations for wide networks (`UNetModel.use_fast_kernels`);
- `torch.compile` of the consistency function (fullgraph: one graph for every σ, since σ
  reaches the model as a 0-d tensor);
- CUDA graphs: the whole multistep loop captured once per batch shape, schedule and label shape
  and replayed (`CUDAGraphSampler`); the step noise is drawn beforehand in the loop's order and
  handed to the sampler through k-diffusion's `noise_sampler` contract, so a replay gives the
  same images as the eager loop.

`FastPaths` holds what is switched on and what it built (a compiled function, a captured graph);
the pipeline owns one and calls `sample`. Samplers whose `Sampler.fast` is False (the EDM Heun
sampler) always run eagerly.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import nn

from .errors import InvalidInputError
from .sampling import Generator, Sampler, randn, sample_consistency, sigma_levels
from .schedule import SchedulerConfig


def draw_step_noise(
    shape: Sequence[int], steps: int, generator: Generator, device: torch.device | str | None
) -> torch.Tensor | None:
    """The step noises a multistep `sample_consistency` run draws, drawn in advance (None for one step)."""
    if steps < 2:
        return None
    return torch.stack([randn(shape, generator, device=device) for _ in range(steps)])


def replay_noise(noise: torch.Tensor) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """A noise sampler handing out noise[0], noise[1], … in turn (one per step of one run)."""
    steps = iter(range(len(noise)))
    return lambda sigma, sigma_next: noise[next(steps)]


class CUDAGraphSampler:
    """`sample_consistency` for one fixed batch shape, schedule and model, captured once as a
    single CUDA graph (every step of the multistep loop) and replayed.

    The graph reads its inputs from static buffers: the scaled starting noise, the class labels
    and the step noises, which the caller draws beforehand in the order the loop would
    (`draw_step_noise`), so a replay gives the same images as the eager loop.
    """

    def __init__(
        self,
        model: Callable[..., torch.Tensor],
        x: torch.Tensor,
        sigmas: Sequence[float],
        class_labels: torch.Tensor | None,
        noise: torch.Tensor | None,
        warmup: int = 2,
        **options: float | bool,
    ) -> None:
        if x.device.type != "cuda":
            raise InvalidInputError(f"cuda_graph: needs a CUDA device, the model is on {x.device}")
        self.key = self.key_for(model, x, sigmas, class_labels)
        self.static_x = x.clone()
        self.static_labels = None if class_labels is None else class_labels.clone()
        self.static_noise = None if noise is None else noise.clone()
        # The graph reads the σ tensors at replay: they must live as long as it does.
        self.levels = sigma_levels(sigmas, x.device)

        def run() -> torch.Tensor:
            noise_sampler = None if self.static_noise is None else replay_noise(self.static_noise)
            return sample_consistency(model, self.static_x, self.levels, class_labels=self.static_labels,
                                      noise_sampler=noise_sampler, **options)

        side = torch.cuda.Stream(device=x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):  # warm-up outside the graph: lazy init, autotuning, compilation
            for _ in range(warmup):
                run()
        torch.cuda.current_stream(x.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.static_out = run()

    @staticmethod
    def key_for(model: Callable, x: torch.Tensor, sigmas: Sequence[float], class_labels: torch.Tensor | None) -> tuple:
        """What a captured graph is valid for."""
        labels = None if class_labels is None else (tuple(class_labels.shape), class_labels.dtype)
        return (id(model), tuple(x.shape), x.dtype, x.stride(), x.device, tuple(float(s) for s in sigmas), labels)

    def __call__(self, x: torch.Tensor, class_labels: torch.Tensor | None, noise: torch.Tensor | None) -> torch.Tensor:
        self.static_x.copy_(x)
        if self.static_labels is not None:
            self.static_labels.copy_(class_labels)
        if self.static_noise is not None:
            self.static_noise.copy_(noise)
        self.graph.replay()
        return self.static_out.clone()


class FastPaths:
    """Which fast paths are on for one network, and the compiled function and graph they built."""

    def __init__(self) -> None:
        self.fast_kernels = False          # on for the network at hand
        self.fast_kernels_asked = False    # what was asked: kept when a network without them comes and goes
        self.compile_options: dict[str, Any] | None = None
        self.cuda_graph = False
        self._compiled: Callable[..., torch.Tensor] | None = None
        self._graph: CUDAGraphSampler | None = None

    def set_fast_kernels(self, network: nn.Module, enabled: bool = True) -> None:
        """Winograd/channels_last on `network` where it pays (`use_fast_kernels`); a point model (MLP)
        has none and is left as it is."""
        supported = hasattr(network, "use_fast_kernels")
        self.fast_kernels_asked = enabled
        self.fast_kernels = enabled and supported
        if supported:
            network.use_fast_kernels(enabled)
        self.reset()

    def moved(self, network: nn.Module) -> None:
        """After the network moved to another device or dtype: what pays off depends on the device."""
        if self.fast_kernels:
            network.use_fast_kernels()
        self.reset()

    def set_compile(self, enabled: bool = True, **options: Any) -> None:
        self.compile_options = {"fullgraph": True, "dynamic": False, **options} if enabled else None
        self.reset()

    def set_cuda_graph(self, enabled: bool = True) -> None:
        self.cuda_graph = enabled
        self._graph = None

    def reset(self) -> None:
        """Compiled functions and captured graphs hold the old weights, dtypes and layouts: rebuild lazily."""
        self._compiled = None
        self._graph = None

    def compiled(self, model: nn.Module, device: torch.device) -> Callable[..., torch.Tensor]:
        """`model`, compiled when compile was asked for. Inductor's freezing is on unless the
        options say otherwise: the weights become constants of the graph (folded casts and
        prepacked, re-laid-out convolution weights on CPU and CUDA)."""
        if self.compile_options is None:
            return model
        if self._compiled is None:
            options = dict(self.compile_options)
            if device.type in ("cpu", "cuda") and options.get("mode") is None:
                options["options"] = {"freezing": True, **options.get("options", {})}
            self._compiled = torch.compile(model, **options)
        return self._compiled

    def sample(
        self,
        sampler: Sampler,
        model: nn.Module,
        network: nn.Module,
        x: torch.Tensor,
        sigmas: list[float],
        config: SchedulerConfig,
        *,
        class_labels: torch.Tensor | None,
        generator: Generator,
        callback: Callable[[int, float, torch.Tensor], None] | None,
        progress: Callable[[int], object],
    ) -> torch.Tensor:
        """`sampler.run` through the fast paths that are on: channels_last input, the compiled model,
        a CUDA graph (on CUDA, without a callback)."""
        options = {"class_labels": class_labels, "callback": callback, "progress": progress}
        if not sampler.fast:
            return sampler.run(model, x, sigmas, config, generator=generator, **options)
        if getattr(network, "channels_last", False):
            x = x.contiguous(memory_format=torch.channels_last)
        model = self.compiled(model, x.device)
        if not (self.cuda_graph and x.device.type == "cuda" and callback is None):
            return sampler.run(model, x, sigmas, config, generator=generator, **options)
        steps = len(sigmas) - 1
        noise = draw_step_noise(x.shape, steps, generator, x.device)
        key = CUDAGraphSampler.key_for(model, x, sigmas, class_labels)
        if self._graph is None or self._graph.key != key:
            self._graph = None  # free the old graph's memory before capturing the new one
            self._graph = CUDAGraphSampler(model, x, sigmas, class_labels, noise, s_noise=config.s_noise,
                                           clip_denoised=config.clip_denoised, sigma_min=config.sigma_min,
                                           sigma_max=config.sigma_max)
        x = self._graph(x, class_labels, noise)
        progress(steps)
        return x
