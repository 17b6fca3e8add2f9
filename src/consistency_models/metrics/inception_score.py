"""Inception Score (Salimans et al. 2016, "Improved Techniques for Training GANs", Section 4).

IS = exp(E_x KL(p(y|x) ‖ p(y))), with p(y|x) the softmax of the classifier's logits and p(y)
the mean of p(y|x) over the images of a split. As in the reference code, the N images are cut
into `splits` contiguous parts [i·N/splits, (i+1)·N/splits) (default 10), the score is computed
per part, and the mean and standard deviation (ddof = 0) over parts are reported.

Which logits: the softmax over all 1008 outputs of the FID Inception's classifier *without* its
bias (pool3·W), as the original TensorFlow code, OpenAI's evaluator (`softmax/logits/MatMul`)
and torch-fidelity (`logits_unbiased`) take them; `InceptionV3FID.logits` gives exactly these.
The sums run in float64.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from ..errors import InvalidInputError


class InceptionScore(NamedTuple):
    mean: float     # mean of the per-split scores
    std: float      # their standard deviation


def inception_score(
    logits: torch.Tensor | np.ndarray,          # (N, K) class logits
    splits: int = 10,
) -> InceptionScore:
    """exp(mean KL(p(y|x) ‖ p(y))) per split of the images, mean and std over the splits."""
    z = torch.as_tensor(logits).detach().to(device="cpu", dtype=torch.float64)
    if z.ndim != 2 or z.shape[1] < 2:
        raise InvalidInputError(f"logits: shape {tuple(z.shape)} is not (N, K) with K ≥ 2 classes")
    if not 1 <= splits <= len(z):
        raise InvalidInputError(f"splits: {splits!r} for {len(z)} images; use 1 to the number of images")
    log_p = z.log_softmax(dim=1)
    scores = []
    for i in range(splits):
        part = log_p[i * len(z) // splits:(i + 1) * len(z) // splits]
        log_marginal = part.exp().mean(dim=0).log()                      # log p(y) of this split
        kl = (part.exp() * (part - log_marginal)).sum(dim=1)              # KL(p(y|x) ‖ p(y)) per image
        scores.append(float(kl.mean().exp()))
    return InceptionScore(float(np.mean(scores)), float(np.std(scores)))
