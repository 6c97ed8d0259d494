"""Confusion matrix, IoU, full-resolution prediction, metrics contract, tables, colour PNGs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from apoda.data import CITYSCAPES19, SYNTHIA16
from apoda.data.io import read_label_indices, read_rgb
from apoda.errors import ApodaError
from apoda.evaluation import (
    ConfusionMatrix,
    evaluate,
    format_table,
    metrics_dict,
    predict_full_res,
    save_color_predictions,
)

torch.set_num_threads(1)


def _hand_made() -> ConfusionMatrix:
    cm = ConfusionMatrix(3)
    label = torch.tensor([[[0, 0, 1], [1, 2, 255]], [[7, 7, 7], [7, 7, 7]]])
    pred = torch.tensor([[[0, 1, 1], [1, 0, 2]], [[0, 1, 2], [0, 1, 2]]])
    cm.update(pred, label)
    return cm


def test_confusion_matrix_matches_hand_computed_iou() -> None:
    cm = _hand_made()
    # (gt, pred) pairs: (0,0) (0,1) (1,1) (1,1) (2,0); 255 and 7 (>= C) are skipped.
    assert cm.matrix.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert cm.matrix.dtype == torch.int64
    np.testing.assert_allclose(cm.iou(), [1 / 3, 2 / 3, 0.0])
    assert cm.miou() == pytest.approx(1 / 3)
    assert cm.miou([0, 1]) == pytest.approx(0.5)


def test_iou_is_nan_for_absent_classes_and_the_mean_skips_them() -> None:
    cm = ConfusionMatrix(4)
    cm.update(torch.tensor([[0, 1, 1]]), torch.tensor([[0, 1, 0]]))
    iou = cm.iou()
    assert iou[:2].tolist() == pytest.approx([0.5, 0.5])
    assert math.isnan(iou[2]) and math.isnan(iou[3])
    assert cm.miou() == pytest.approx(0.5)
    assert math.isnan(cm.miou([2, 3]))
    assert math.isnan(ConfusionMatrix(2).miou())


def test_merge_equals_one_pass_and_checks_sizes() -> None:
    a, b = ConfusionMatrix(3), ConfusionMatrix(3)
    a.update(torch.tensor([[0, 1, 1]]), torch.tensor([[0, 0, 1]]))
    b.update(torch.tensor([[1, 0, 2]]), torch.tensor([[2, 2, 255]]))
    whole = ConfusionMatrix(3)
    whole.update(torch.tensor([[0, 1, 1, 1, 0, 2]]), torch.tensor([[0, 0, 1, 2, 2, 255]]))
    assert torch.equal(a.merge(b).matrix, whole.matrix)
    with pytest.raises(ApodaError, match="cannot merge a 2-class"):
        a.merge(ConfusionMatrix(2))


def test_update_rejects_bad_shapes_and_predictions() -> None:
    cm = ConfusionMatrix(3)
    with pytest.raises(ApodaError, match="upsample the logits"):
        cm.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.zeros(1, 4, 4, dtype=torch.long))
    with pytest.raises(ApodaError, match=r"must be in \[0, 3\), got \[0, 5\]"):
        cm.update(torch.tensor([[0, 5]]), torch.tensor([[0, 1]]))


class FixedLogits(nn.Module):
    """Returns the same low-resolution logits for every image, whatever the input size."""

    def __init__(self, logits: Tensor) -> None:
        super().__init__()
        self.logits = nn.Parameter(logits)
        self.seen_grad_enabled: list[bool] = []
        self.seen_training: list[bool] = []

    def forward(self, images: Tensor) -> Tensor:
        self.seen_grad_enabled.append(torch.is_grad_enabled())
        self.seen_training.append(self.training)
        return self.logits.expand(images.shape[0], -1, -1, -1)


# Three classes on a 1x2 grid: left favours 0, right favours 1, both give class 2 a high score.
# Halfway between them the bilinear blend makes class 2 win, which an argmax taken before
# upsampling could never produce.
LOGITS = torch.tensor([[[[5.0, 0.0]], [[0.0, 5.0]], [[4.0, 4.0]]]])


def test_predict_full_res_upsamples_logits_before_argmax() -> None:
    pred = predict_full_res(FixedLogits(LOGITS), torch.zeros(1, 3, 1, 2), (1, 3))
    assert pred.tolist() == [[[0, 2, 1]]]
    low_res_argmax = LOGITS.argmax(1, keepdim=True).float()
    nearest = torch.nn.functional.interpolate(low_res_argmax, size=(1, 3), mode="nearest")
    assert 2 not in nearest.long().flatten().tolist()

    class TwoHeads(nn.Module):
        def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
            return LOGITS, LOGITS

    with pytest.raises(ApodaError, match="expected the model to return logits"):
        predict_full_res(TwoHeads(), torch.zeros(1, 3, 1, 2), (1, 3))


def test_evaluate_scores_at_label_resolution_and_restores_mode() -> None:
    model = FixedLogits(LOGITS)
    model.train()
    batches = [
        {"image": torch.zeros(2, 3, 1, 2), "label": torch.tensor([[[0, 2, 1]], [[0, 2, 255]]])},
        {"image": torch.zeros(1, 3, 1, 2), "label": torch.tensor([[[0, 1, 1]]])},
    ]
    cm = evaluate(model, batches, 3, "cpu")
    assert model.training and model.seen_training == [False, False]
    assert model.seen_grad_enabled == [False, False]
    # Predictions are [0, 2, 1] everywhere; only the last label's middle pixel (1) is wrong.
    assert cm.matrix.tolist() == [[3, 0, 0], [0, 2, 1], [0, 0, 2]]
    assert cm.matrix.device.type == "cpu"
    doubled = evaluate(model.eval(), batches, 3, "cpu", reduce=lambda m: m * 2)
    assert not model.training
    assert torch.equal(doubled.matrix, cm.matrix * 2)


def _synthia_cm() -> ConfusionMatrix:
    cm = ConfusionMatrix(16)
    # road perfect; wall (3) half right; sky (9) never right; bicycle (15) absent everywhere.
    label = torch.tensor([0, 0, 3, 3, 9, 9, 12, 12])
    pred = torch.tensor([0, 0, 3, 0, 1, 1, 12, 12])
    cm.update(pred[None], label[None])
    return cm


def test_metrics_dict_contract_subsets_and_json_safety() -> None:
    m = metrics_dict(_synthia_cm(), SYNTHIA16, ["wall", "bicycle"], "cityscapes", "val", 500, "c")
    assert m["dataset"] == "cityscapes" and m["split"] == "val" and m["num_classes"] == 16
    assert m["iteration"] == 500 and m["checkpoint"] == "c"
    pc = m["per_class"]
    assert pc["road"] == pytest.approx(200 / 3)  # TP 2, FP 1 (a wall pixel)
    assert pc["wall"] == pytest.approx(50.0)
    assert pc["sky"] == 0.0 and pc["sidewalk"] == 0.0 and pc["car"] == 100.0
    assert pc["bicycle"] is None and pc["fence"] is None
    assert m["miou"] == pytest.approx((200 / 3 + 50 + 0 + 0 + 100) / 5)
    assert m["tail_miou"] == pytest.approx(50.0)
    assert m["head_miou"] == pytest.approx((200 / 3 + 0 + 0 + 100) / 4)
    # mIoU13 leaves wall out.
    assert m["subsets"]["mIoU16"] == pytest.approx(m["miou"])
    assert m["subsets"]["mIoU13"] == pytest.approx((200 / 3 + 0 + 0 + 100) / 4)
    json.dumps(m, allow_nan=False)
    single = metrics_dict(ConfusionMatrix(19), CITYSCAPES19, [], "cityscapes", "val")
    assert "subsets" not in single and single["miou"] is None and single["tail_miou"] is None
    with pytest.raises(ApodaError, match="'bike' is not in scheme 'synthia16'"):
        metrics_dict(_synthia_cm(), SYNTHIA16, ["bike"], "cityscapes", "val")
    with pytest.raises(ApodaError, match="16 classes but scheme 'cityscapes19' has 19"):
        metrics_dict(_synthia_cm(), CITYSCAPES19, [], "cityscapes", "val")


def test_format_table_rows_columns_and_difference() -> None:
    base = metrics_dict(_synthia_cm(), SYNTHIA16, ["wall", "bicycle"], "cityscapes", "val")
    better = json.loads(json.dumps(base))
    better["per_class"]["sky"] = 12.5
    better["miou"] = base["miou"] + 2.5
    table = format_table(
        {"source only": base, "APODA": better},
        SYNTHIA16.class_names,
        ["wall", "bicycle"],
        diff=("source only", "APODA"),
    )
    lines = table.splitlines()
    assert lines[0] == "| class | source only | APODA | APODA - source only |"
    assert "| sky | 0.0 | 12.5 | +12.5 |" in lines
    assert "| *wall | 50.0 | 50.0 | +0.0 |" in lines
    assert "| *bicycle | - | - | - |" in lines
    assert any(line.startswith("| mIoU | ") and line.endswith("| +2.5 |") for line in lines)
    assert any(line.startswith("| mIoU13 | ") for line in lines)
    assert any(line.startswith("| tail mean (*) | 50.0 | 50.0 |") for line in lines)
    assert len(lines) == 2 + 16 + 3 + 2
    with pytest.raises(ApodaError, match="diff columns"):
        format_table({"a": base}, SYNTHIA16.class_names, [], diff=("a", "b"))


def test_save_color_predictions_writes_palette_pngs(tmp_path: Path) -> None:
    preds = torch.tensor([[[0, 9], [15, 255]], [[1, 2], [3, 40]]])
    paths = save_color_predictions(preds, ["a", "b"], SYNTHIA16, tmp_path / "pred")
    assert [p.name for p in paths] == ["a.png", "b.png"]
    assert read_label_indices(paths[0]).tolist() == [[0, 9], [15, 255]]
    assert read_label_indices(paths[1]).tolist() == [[1, 2], [3, 255]]  # unknown -> ignore
    rgb = read_rgb(paths[0])
    assert rgb[0, 1].tolist() == [70, 130, 180] and rgb[1, 1].tolist() == [0, 0, 0]
    with pytest.raises(ApodaError, match="one name each"):
        save_color_predictions(preds, ["a"], SYNTHIA16, tmp_path)
