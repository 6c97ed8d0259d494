"""Reports of run folders: reading them, drawing their pictures, writing report.md."""

from apoda.report.markdown import write_report
from apoda.report.plots import (
    PICTURES,
    plot_class_distribution,
    plot_curves,
    plot_gradient_intensity,
    plot_per_class_iou,
    plot_pseudo_labels,
    plot_qualitative,
)
from apoda.report.reading import Run, Samples, read_run

__all__ = [
    "PICTURES",
    "Run",
    "Samples",
    "plot_class_distribution",
    "plot_curves",
    "plot_gradient_intensity",
    "plot_per_class_iou",
    "plot_pseudo_labels",
    "plot_qualitative",
    "read_run",
    "write_report",
]
