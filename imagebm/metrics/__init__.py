"""Image-sample metrics: FID and Inception score (IS) from Inception-v3 (:mod:`.inception`,
:mod:`.fid`), domain scores for tiny image domains from a small classifier
(:mod:`.classifier`), and nearest-neighbour search (:mod:`.neighbours`)."""

from imagebm.metrics.classifier import (
    CLASSIFIER_FORMAT,
    DomainClassifier,
    DomainClassifierConfig,
    domain_scores,
    train_domain_classifier,
)
from imagebm.metrics.fid import (
    Extractor,
    Reference,
    Stats,
    as_images,
    extract_features,
    feature_stats,
    fid,
    fid_from_stats,
    image_batches,
    inception_score,
    load_stats,
    reference_stats,
    save_stats,
)
from imagebm.metrics.inception import (
    INCEPTION_ENV,
    INCEPTION_FILE,
    INCEPTION_SHA256_PREFIX,
    INCEPTION_URL,
    InceptionFeatures,
    default_inception_path,
    image_scores,
    inception_path,
    load_inception,
)
from imagebm.metrics.neighbours import nearest

__all__ = [
    "CLASSIFIER_FORMAT", "INCEPTION_ENV", "INCEPTION_FILE", "INCEPTION_SHA256_PREFIX",
    "INCEPTION_URL", "DomainClassifier", "DomainClassifierConfig", "Extractor",
    "InceptionFeatures", "Reference", "Stats", "as_images", "default_inception_path",
    "domain_scores", "extract_features", "feature_stats", "fid", "fid_from_stats",
    "image_batches", "image_scores", "inception_path", "inception_score", "load_inception",
    "load_stats", "nearest", "reference_stats", "save_stats", "train_domain_classifier",
]
