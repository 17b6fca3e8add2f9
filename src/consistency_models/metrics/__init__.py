"""Sample-quality metrics: FID (Fréchet distance of Inception or digits features), IS, KID, precision/recall."""

from .features import EXTRACTORS, DigitsFeatures, FeatureExtractor, InceptionFeatures, feature_extractor
from .frechet import RunningStatistics, frechet_distance, gaussian_statistics
from .inception import InceptionV3FID, load_inception, resize_bilinear_tf1
from .inception_score import InceptionScore, inception_score
from .kid import KIDResult, kernel_inception_distance
from .precision_recall import PrecisionRecall, knn_radii, precision_recall
from .sliced_wasserstein import sliced_wasserstein

__all__ = [
    "EXTRACTORS",
    "DigitsFeatures",
    "FeatureExtractor",
    "InceptionFeatures",
    "InceptionScore",
    "InceptionV3FID",
    "KIDResult",
    "PrecisionRecall",
    "RunningStatistics",
    "feature_extractor",
    "frechet_distance",
    "gaussian_statistics",
    "inception_score",
    "kernel_inception_distance",
    "knn_radii",
    "load_inception",
    "precision_recall",
    "resize_bilinear_tf1",
    "sliced_wasserstein",
]
