"""apoda: unsupervised domain adaptation for semantic segmentation by adversarial perturbation."""

__version__ = "0.2.0"
