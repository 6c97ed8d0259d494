"""Models: DeepLab-v2 backbones cut into G and F, the ASPP classifier, the discriminator and
pretrained-weight loading."""

from apoda.models.aspp import ASPPClassifier
from apoda.models.backbones import (
    STAGE_NAMES,
    Backbone,
    BNMode,
    FrozenBatchNorm2d,
    LegacyBatchNorm2d,
    Stage,
    build_backbone,
    default_bn_mode,
    resnet101,
    small,
    vgg16,
)
from apoda.models.discriminator import Discriminator
from apoda.models.pretrained import LoadReport, load_pretrained
from apoda.models.segmenter import (
    ALIGN_CORNERS,
    Classifier,
    Cut,
    Segmenter,
    build_segmenter,
    upsample_logits,
)

__all__ = [
    "ALIGN_CORNERS",
    "STAGE_NAMES",
    "ASPPClassifier",
    "BNMode",
    "Backbone",
    "Classifier",
    "Cut",
    "Discriminator",
    "FrozenBatchNorm2d",
    "LegacyBatchNorm2d",
    "LoadReport",
    "Segmenter",
    "Stage",
    "build_backbone",
    "build_segmenter",
    "default_bn_mode",
    "load_pretrained",
    "resnet101",
    "small",
    "upsample_logits",
    "vgg16",
]
