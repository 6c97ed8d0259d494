"""Loading DeepLab-init and torchvision backbone weights, and refusing bad files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision

from apoda.errors import ApodaError
from apoda.models import Segmenter, build_segmenter, load_pretrained


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _fill(shapes: dict[str, torch.Size]) -> dict[str, torch.Tensor]:
    """A distinct constant per key, stored as an expanded one-element tensor: the file stays
    tiny while every tensor can still be told apart after loading."""
    return {
        k: torch.full((1,), float(i + 1)).expand(shape) if len(shape) else torch.tensor(i + 1.0)
        for i, (k, shape) in enumerate(shapes.items())
    }


def _weights(seg: Segmenter) -> dict[str, torch.Size]:
    """The segmenter's backbone tensors a checkpoint carries (no batch counters)."""
    return {
        k: v.shape
        for k, v in seg.backbone_tensors().items()
        if not k.endswith("num_batches_tracked")
    }


def _assert_loaded(seg: Segmenter, expected: dict[str, torch.Tensor]) -> None:
    tensors = seg.backbone_tensors()
    for key, value in expected.items():
        assert torch.equal(tensors[key], value.expand(tensors[key].shape)), key


def test_deeplab_init_checkpoint_loads_across_the_cut(tmp_path: Path) -> None:
    seg = build_segmenter("resnet101", 19, cut="layer2")
    backbone = _fill(_weights(seg))
    head = {
        f"layer5.conv2d_list.{i}.{p}": torch.zeros(shape)
        for i in range(4)
        for p, shape in (("weight", (21, 2048, 3, 3)), ("bias", (21,)))
    }
    path = tmp_path / "DeepLab_resnet_pretrained_init.pth"
    torch.save({f"Scale.{k}": v for k, v in {**backbone, **head}.items()}, path)
    lines: list[str] = []
    report = load_pretrained(seg, path, log=lines.append)
    assert (report.loaded, report.total, report.skipped) == (520, 520, 8)
    assert report.missing == [] and report.unexpected == []
    assert lines == [
        f"loaded 520/520 backbone tensors from {path}; missing: [] (0); "
        "unexpected: [] (0); skipped head: 8"
    ]
    _assert_loaded(seg, backbone)
    assert torch.equal(seg.feature_extractor.conv1.weight, backbone["conv1.weight"])
    assert torch.equal(
        seg.classifier.backbone.layer4[2].bn3.running_var, backbone["layer4.2.bn3.running_var"]
    )


def test_torchvision_resnet101_loads(tmp_path: Path) -> None:
    seg = build_segmenter("resnet101", 5, cut="pixel")
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in torchvision.models.resnet101().state_dict().items()}
    state = _fill(shapes)
    path = tmp_path / "resnet101.pth"
    torch.save(state, path)
    report = load_pretrained(seg, path, kind="torchvision", log=lambda _: None)
    assert (report.loaded, report.total, report.skipped) == (520, 520, 2)  # fc.weight, fc.bias
    weights = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    _assert_loaded(seg, {k: v for k, v in weights.items() if not k.startswith("fc.")})


def test_torchvision_vgg16_loads_and_reports_new_fc_layers(tmp_path: Path) -> None:
    seg = build_segmenter("vgg16", 5, cut="layer3")
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in torchvision.models.vgg16().state_dict().items()}
    state = _fill(shapes)
    path = tmp_path / "vgg16.pth"
    torch.save(state, path)
    lines: list[str] = []
    report = load_pretrained(seg, path, log=lines.append)
    assert (report.loaded, report.total, report.skipped) == (26, 30, 6)
    assert report.missing == ["fc6.weight", "fc6.bias", "fc7.weight", "fc7.bias"]
    assert lines[0].startswith(f"loaded 26/30 backbone tensors from {path}; missing: ['fc6")
    _assert_loaded(seg, {k: v for k, v in state.items() if k.startswith("features.")})
    assert torch.equal(seg.classifier.backbone.features["28"].bias, state["features.28.bias"])


def test_mostly_missing_checkpoint_is_refused_untouched(tmp_path: Path) -> None:
    seg = build_segmenter("resnet101", 3)
    weights = _fill(_weights(seg))
    kept = dict(list(weights.items())[:100])
    path = tmp_path / "partial.pth"
    torch.save({f"Scale.{k}": v for k, v in kept.items()}, path)
    before = seg.feature_extractor.conv1.weight.detach().clone()
    with pytest.raises(ApodaError, match=r"partial\.pth.*only 100/520"):
        load_pretrained(seg, path, log=lambda _: None)
    assert torch.equal(before, seg.feature_extractor.conv1.weight)


def test_wrong_architecture_is_refused(tmp_path: Path) -> None:
    source = build_segmenter("small", 3)
    path = tmp_path / "small.pth"
    torch.save(_fill(_weights(source)), path)
    with pytest.raises(ApodaError, match=r"small\.pth.*0/26 pretrainable vgg16"):
        load_pretrained(build_segmenter("vgg16", 3), path, log=lambda _: None)
    report = load_pretrained(build_segmenter("small", 3), path, log=lambda _: None)
    assert report.loaded == report.total == len(_weights(source))


def test_shape_mismatch_is_refused(tmp_path: Path) -> None:
    seg = build_segmenter("small", 3)
    weights = _fill(_weights(seg))
    weights["layer2.0.conv1.weight"] = torch.zeros(1, 2, 3, 3)
    path = tmp_path / "mismatch.pth"
    torch.save(weights, path)
    before = seg.feature_extractor.conv1.weight.detach().clone()
    with pytest.raises(ApodaError, match=r"mismatch\.pth: layer2\.0\.conv1\.weight has shape"):
        load_pretrained(seg, path, log=lambda _: None)
    assert torch.equal(before, seg.feature_extractor.conv1.weight)


def test_unreadable_and_non_state_dict_files(tmp_path: Path) -> None:
    seg = build_segmenter("small", 3)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file at all")
    with pytest.raises(ApodaError, match=r"garbage\.pth is not a file written by torch\.save"):
        load_pretrained(seg, garbage)
    truncated = tmp_path / "truncated.pth"
    torch.save({"conv1.weight": torch.zeros(64)}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(ApodaError, match=r"truncated\.pth is truncated or damaged \(200 bytes"):
        load_pretrained(seg, truncated)
    with pytest.raises(ApodaError, match=r"absent\.pth does not exist"):
        load_pretrained(seg, tmp_path / "absent.pth")
    listed = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], listed)
    with pytest.raises(ApodaError, match=r"list\.pth: expected a state dict"):
        load_pretrained(seg, listed)
    nested = tmp_path / "nested.pth"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}}, nested)
    with pytest.raises(ApodaError, match=r"nested\.pth.*\['state_dict'\] are not tensors"):
        load_pretrained(seg, nested)


class _TouchOnUnpickle:
    """An object whose unpickling creates a file: stands in for a malicious checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[Path]]:
        return (Path.touch, (self.marker,))


def test_malicious_pickle_is_refused_without_running(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"conv1.weight": torch.zeros(1), "payload": _TouchOnUnpickle(marker)}, path)
    with pytest.raises(ApodaError, match=r"evil\.pth holds Python objects or code") as err:
        load_pretrained(build_segmenter("small", 3), path)
    assert "weights_only" in str(err.value) and "\n" not in str(err.value)
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the payload is live: unsafe loading runs it
    assert marker.exists()
