"""Class schemes: Cityscapes table from cityscapesscripts, SYNTHIA mappings, colours, tail split."""

from __future__ import annotations

import numpy as np
import pytest
from cityscapesscripts.helpers.labels import trainId2label

from apoda.data.classes import (
    CITYSCAPES19,
    CITYSCAPES_PALETTE,
    SYNTHIA16,
    colorize,
    get_scheme,
    tail_classes,
)
from apoda.errors import ApodaError


def test_cityscapes19_names_ids_and_colours_come_from_cityscapesscripts() -> None:
    assert CITYSCAPES19.num_classes == 19
    for train_id, name in enumerate(CITYSCAPES19.class_names):
        label = trainId2label[train_id]
        assert name == label.name
        assert CITYSCAPES19.colors[train_id] == tuple(label.color)
        assert CITYSCAPES19.cityscapes_lut[label.id] == train_id
        assert tuple(CITYSCAPES_PALETTE[train_id]) == tuple(label.color)
    assert CITYSCAPES19.class_names[6:8] == ("traffic light", "traffic sign")
    assert CITYSCAPES19.class_names[-2:] == ("motorcycle", "bicycle")
    # GTA5/Cityscapes ids outside the 19 classes are ignored (0 unlabelled, 9 parking, 34+).
    assert {int(CITYSCAPES19.cityscapes_lut[i]) for i in (0, 6, 9, 14, 29, 34, 255)} == {255}
    assert CITYSCAPES_PALETTE.shape == (256, 3) and CITYSCAPES_PALETTE.dtype == np.uint8
    assert CITYSCAPES_PALETTE[255].tolist() == [0, 0, 0]
    assert CITYSCAPES19.eval_subsets == {"mIoU19": tuple(range(19))}


def test_synthia16_mapping_follows_the_field() -> None:
    raw_to_index = {3: 0, 4: 1, 2: 2, 21: 3, 5: 4, 7: 5, 15: 6, 9: 7, 6: 8, 1: 9, 10: 10, 17: 11}
    raw_to_index |= {8: 12, 19: 13, 12: 14, 11: 15}
    lut = SYNTHIA16.synthia_lut
    assert lut is not None and lut.shape == (65536,)
    for raw, index in raw_to_index.items():
        assert lut[raw] == index
    others = np.setdiff1d(np.arange(65536), list(raw_to_index))
    assert np.all(lut[others] == 255)
    assert SYNTHIA16.class_names[3] == "wall" and SYNTHIA16.class_names[9] == "sky"
    # Cityscapes ids: terrain (22), truck (27), train (31) have no slot; sky (23) -> 9, bus -> 13.
    cs = SYNTHIA16.cityscapes_lut
    assert (cs[22], cs[27], cs[31]) == (255, 255, 255)
    assert (cs[7], cs[23], cs[28], cs[33]) == (0, 9, 13, 15)


def test_synthia_subsets_drop_wall_fence_pole_for_miou13() -> None:
    assert SYNTHIA16.eval_subsets["mIoU16"] == tuple(range(16))
    kept = [SYNTHIA16.class_names[i] for i in SYNTHIA16.eval_subsets["mIoU13"]]
    assert len(kept) == 13
    assert not {"wall", "fence", "pole"} & set(kept)


def test_cityscapes19_synthia_table_fills_16_of_19_slots() -> None:
    lut = CITYSCAPES19.synthia_lut
    assert lut is not None
    used = set(np.unique(lut).tolist()) - {255}
    missing = {CITYSCAPES19.class_names[i] for i in set(range(19)) - used}
    assert missing == {"terrain", "truck", "train"}
    assert lut[1] == CITYSCAPES19.class_names.index("sky")


def test_get_scheme_and_unknown_name() -> None:
    assert get_scheme("synthia16") is SYNTHIA16
    assert get_scheme("cityscapes19") is CITYSCAPES19
    with pytest.raises(ApodaError, match=r"unknown class scheme 'synthia13'.*cityscapes19"):
        get_scheme("synthia13")


def test_lookup_tables_are_read_only() -> None:
    with pytest.raises(ValueError):
        CITYSCAPES19.cityscapes_lut[7] = 3


def test_colorize_uses_the_scheme_colours_and_blacks_out_ignore() -> None:
    label = np.array([[0, 9], [255, 15]], dtype=np.uint8)
    out = colorize(label, SYNTHIA16)
    assert out.dtype == np.uint8 and out.shape == (2, 2, 3)
    assert out[0, 0].tolist() == [128, 64, 128]  # road
    assert out[0, 1].tolist() == [70, 130, 180]  # sky is index 9 in synthia16
    assert out[1, 0].tolist() == [0, 0, 0]
    assert out[1, 1].tolist() == [119, 11, 32]  # bicycle
    with pytest.raises(ApodaError, match=r"\[H, W\]"):
        colorize(np.zeros((2, 2, 3), dtype=np.uint8), SYNTHIA16)


def test_tail_classes_threshold() -> None:
    fractions = {"road": 0.5, "sky": 0.489, "sign": 0.009, "bicycle": 0.002, "train": 0.0}
    assert tail_classes(fractions) == ["sign", "bicycle", "train"]
    assert tail_classes(fractions, threshold=0.005) == ["bicycle", "train"]
    with pytest.raises(ApodaError, match="threshold"):
        tail_classes(fractions, threshold=1.5)
