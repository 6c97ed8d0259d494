"""How a self-training run's pseudo-labels evolve: at every evaluation, the mean teacher labels
a fixed handful of target training images, and the probe records

- `agreement`: the share of pixels whose pseudo-label equals the previous evaluation's (needs
  no target label): the label-free budget rule reads it (`settled_iteration`);
- `confident_share`: the share of pixels at or above the method's confidence threshold;
- where those images have labels (MiniCity, Cityscapes), each class's pseudo-label precision
  and recall and how often the class is pseudo-labelled against how often it is there: a
  diagnostic of what the teacher feeds the student, never used to choose anything.

The previous evaluation's pseudo-labels and the agreement history are checkpointed, so a resumed
run measures the same agreement as an uninterrupted one."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from apoda.data.classes import IGNORE_INDEX


def settled_iteration(history: Sequence[tuple[int, float]], tolerance: float) -> int | None:
    """The label-free budget rule: the first evaluation at which the agreement with the previous
    evaluation's pseudo-labels moved by less than `tolerance` from the agreement measured one
    evaluation earlier (the teacher's labels have stopped changing faster or slower); None
    before that happens. `history` holds (iteration, agreement) in order."""
    for (_, before), (iteration, now) in itertools.pairwise(history):
        if abs(now - before) < tolerance:
            return iteration
    return None


class PseudoLabelProbe:
    """The teacher's pseudo-labels on `dataset` (no augmentation), compared across evaluations."""

    def __init__(
        self,
        dataset: Dataset[Any],
        class_names: Sequence[str],
        threshold: float | None,
        tolerance: float,
        batch_size: int,
    ) -> None:
        self.dataset = dataset
        self.class_names = list(class_names)
        self.threshold = threshold
        self.tolerance = tolerance
        self.batch_size = batch_size
        self.previous: Tensor | None = None
        self.history: list[tuple[int, float]] = []

    @torch.no_grad()
    def _label(self, network: nn.Module, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        """Pseudo-labels, top probabilities and true labels (255 where unknown) of every image."""
        was_training = network.training
        network.eval()
        labels, confidence, truth = [], [], []
        # its own generator: a DataLoader draws its seed from the global RNG otherwise, and the
        # probe must leave training exactly as it would be without it
        loader = DataLoader(
            self.dataset, batch_size=self.batch_size, shuffle=False, generator=torch.Generator()
        )
        for batch in loader:
            probs = network(batch["image"].to(device)).float().softmax(1)
            top, label = probs.max(1)
            labels.append(label.to(torch.uint8).cpu())
            confidence.append(top.cpu())
            truth.append(batch["label"].to(torch.uint8))
        network.train(was_training)
        return torch.cat(labels), torch.cat(confidence), torch.cat(truth)

    def measure(self, network: nn.Module, device: torch.device, iteration: int) -> dict[str, Any]:
        """Label the probe images with `network` and compare (see the module docstring)."""
        labels, confidence, truth = self._label(network, device)
        out: dict[str, Any] = {"images": len(labels), "agreement": None}
        if self.previous is not None:
            agreement = float((labels == self.previous).double().mean())
            out["agreement"] = agreement
            self.history.append((iteration, agreement))
        self.previous = labels
        if self.threshold is not None:
            out["confident_share"] = float((confidence >= self.threshold).double().mean())
        out["settled_at"] = settled_iteration(self.history, self.tolerance)
        known = truth != IGNORE_INDEX
        if bool(known.any()):
            out.update(self._against_truth(labels[known].long(), truth[known].long()))
        return out

    def _against_truth(self, labels: Tensor, truth: Tensor) -> dict[str, Any]:
        """Pixel accuracy and, per class, precision, recall and labelled / true pixel share."""
        n = len(self.class_names)
        counts = torch.bincount(truth * n + labels, minlength=n * n).view(n, n).double()
        hits, labelled, present = counts.diag(), counts.sum(0), counts.sum(1)
        total = float(counts.sum())

        def share(a: Tensor, b: Tensor, i: int) -> float | None:
            return float(a[i] / b[i]) if b[i] > 0 else None

        per_class = {
            name: {
                "precision": share(hits, labelled, i),
                "recall": share(hits, present, i),
                "labelled_share": float(labelled[i]) / total,
                "true_share": float(present[i]) / total,
            }
            for i, name in enumerate(self.class_names)
        }
        return {"accuracy": float(hits.sum()) / total, "per_class": per_class}

    def state_dict(self) -> dict[str, Any]:
        """The previous pseudo-labels (uint8) and the agreement history."""
        return {"previous": self.previous, "history": list(self.history)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a checkpointed probe."""
        self.previous = state["previous"]
        self.history = [(int(i), float(a)) for i, a in state["history"]]
