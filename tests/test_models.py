"""Backbones, the G/F cut, ASPP, batch-norm modes, freezing and the discriminator."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torchvision
from torch import nn

from apoda.errors import ApodaError
from apoda.export import rounding_tolerance
from apoda.models import (
    ASPPClassifier,
    Discriminator,
    FrozenBatchNorm2d,
    Segmenter,
    build_backbone,
    build_segmenter,
    resnet101,
    small,
    upsample_logits,
    vgg16,
)

CUTS = ("pixel", "layer1", "layer2", "layer3", "layer4")


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _check_cuts_compose(segmenters: dict[str, Segmenter], x: torch.Tensor) -> None:
    """F(G(x)) equals forward bitwise for every cut, and every cut computes the same function."""
    size = tuple(x.shape[-2:])
    reference = None
    with torch.no_grad():
        for cut, seg in segmenters.items():
            seg.eval()
            logits = seg(x)
            composed = upsample_logits(seg.classifier(seg.feature_extractor(x)), size)
            assert torch.equal(composed, logits), cut
            assert torch.equal(seg.classify(seg.features(x), size), logits), cut
            assert logits.shape == (x.shape[0], seg.num_classes, *size)
            if reference is None:
                reference = logits
            assert torch.equal(logits, reference), cut


def test_small_every_cut_composes_exactly() -> None:
    segmenters = {}
    for cut in CUTS:
        torch.manual_seed(0)
        segmenters[cut] = build_segmenter("small", 5, cut=cut)
    x = torch.randn(2, 3, 33, 41, generator=torch.Generator().manual_seed(1))
    _check_cuts_compose(segmenters, x)


@pytest.mark.parametrize(("arch", "channels"), [("resnet101", 2048), ("vgg16", 1024)])
def test_large_backbones_every_cut_composes_exactly(arch: str, channels: int) -> None:
    torch.manual_seed(0)
    backbone = build_backbone(arch)  # type: ignore[arg-type]
    head = ASPPClassifier(channels, 4)
    segmenters = {cut: Segmenter(backbone, head, cut) for cut in CUTS}  # type: ignore[arg-type]
    _check_cuts_compose(segmenters, torch.randn(1, 3, 33, 41))


@pytest.mark.parametrize(
    ("cut", "channels", "stride"),
    [("pixel", 3, 1), ("layer1", 48, 4), ("layer2", 96, 8), ("layer3", 192, 8), ("layer4", 256, 8)],
)
def test_small_feature_shapes(cut: str, channels: int, stride: int) -> None:
    torch.manual_seed(0)
    seg = build_segmenter("small", 7, cut=cut)  # type: ignore[arg-type]
    assert (seg.feature_channels, seg.feature_stride, seg.cut) == (channels, stride, cut)
    f = seg.features(torch.randn(2, 3, 64, 128))
    assert f.shape == (2, channels, 64 // stride, 128 // stride)
    assert seg(torch.randn(2, 3, 64, 128)).shape == (2, 7, 64, 128)


def test_output_stride_8_on_odd_sizes() -> None:
    torch.manual_seed(0)
    x = torch.randn(1, 3, 33, 41)
    with torch.no_grad():
        r101 = resnet101().eval()(x)
        v16 = vgg16().eval()(x)
        sm = small().eval()(x)
    # ResNet's ceil-mode pooling and strided convs round up; VGG's 2x2 pools round down.
    assert r101.shape == (1, 2048, math.ceil(33 / 8), math.ceil(41 / 8))
    assert sm.shape == (1, 256, math.ceil(33 / 8), math.ceil(41 / 8))
    assert v16.shape == (1, 1024, 33 // 8, 41 // 8)


def test_resnet101_layout_matches_torchvision_and_deeplab() -> None:
    backbone = resnet101()
    with torch.device("meta"):
        reference = torchvision.models.resnet101().state_dict()
    ours = backbone.state_dict()
    assert set(reference) - set(ours) == {"fc.weight", "fc.bias"}
    assert set(ours) <= set(reference)
    assert all(ours[k].shape == reference[k].shape for k in ours)
    assert [len(getattr(backbone, f"layer{i}")) for i in range(1, 5)] == [3, 4, 23, 3]
    assert backbone.maxpool.ceil_mode
    block = backbone.layer2[0]  # Caffe style: the stride is on the first 1x1 conv
    assert block.conv1.stride == (2, 2) and block.conv2.stride == (1, 1)
    for layer, dilation in (("layer3", 2), ("layer4", 4)):
        for b in getattr(backbone, layer):
            assert b.conv2.dilation == (dilation, dilation)
            assert b.conv2.padding == (dilation, dilation)
    for i in range(1, 5):
        layer = getattr(backbone, f"layer{i}")
        assert layer[0].downsample is not None
        assert all(b.downsample is None for b in layer[1:])
    assert backbone.stage_names == ("stem", *CUTS[1:])
    assert [s.out_channels for s in backbone.stages] == [64, 256, 512, 1024, 2048]


def test_vgg16_layout_keeps_torchvision_indices() -> None:
    backbone = vgg16()
    with torch.device("meta"):
        reference = torchvision.models.vgg16().state_dict()
    ours = backbone.state_dict()
    features = {k: v for k, v in reference.items() if k.startswith("features.")}
    assert set(ours) == set(features) | {"fc6.weight", "fc6.bias", "fc7.weight", "fc7.bias"}
    assert all(ours[k].shape == features[k].shape for k in features)
    assert "23" not in backbone.features and "30" not in backbone.features  # pool4, pool5
    for index in (24, 26, 28):
        assert backbone.features[str(index)].dilation == (2, 2)
    for fc in (backbone.fc6, backbone.fc7):
        assert (fc.dilation, fc.padding, fc.out_channels) == ((4, 4), (4, 4), 1024)
    stem = [path for path, _ in backbone.stage("stem").entries]
    assert stem == ["features.0", "features.1", "features.2", "features.3", "features.4"]
    assert [path for path, _ in backbone.stage("layer4").entries][-4:] == [
        "fc6",
        "fc6_relu",
        "fc7",
        "fc7_relu",
    ]
    assert not any(isinstance(m, nn.Dropout2d) for m in backbone.modules())
    assert sum(isinstance(m, nn.Dropout2d) for m in vgg16(fc_dropout=0.5).modules()) == 2


def test_small_backbone_size() -> None:
    count = sum(p.numel() for p in small().parameters())
    assert 500_000 < count < 1_500_000


def test_aspp_sums_all_branches_and_legacy_sums_two() -> None:
    torch.manual_seed(0)
    aspp = ASPPClassifier(16, 5)
    x = torch.randn(2, 16, 9, 11)
    with torch.no_grad():
        branches = [conv(x) for conv in aspp.conv2d_list]
        assert [c.dilation for c in aspp.conv2d_list] == [(d, d) for d in (6, 12, 18, 24)]
        assert torch.allclose(aspp(x), sum(branches), atol=1e-6)
        aspp.legacy_first_two = True
        assert torch.allclose(aspp(x), branches[0] + branches[1], atol=1e-6)
    assert aspp(x).shape == (2, 5, 9, 11)


def test_aspp_init() -> None:
    torch.manual_seed(0)
    aspp = ASPPClassifier(256, 19)
    weights = torch.cat([c.weight.flatten() for c in aspp.conv2d_list])
    assert abs(weights.std().item() - 0.01) < 5e-4
    assert abs(weights.mean().item()) < 5e-4
    assert all(torch.count_nonzero(c.bias) == 0 for c in aspp.conv2d_list)


def _train_steps(seg: Segmenter, steps: int = 2) -> None:
    optimizer = torch.optim.SGD(seg.parameter_groups(0.1), lr=0.1, momentum=0.9)
    gen = torch.Generator().manual_seed(3)
    seg.train()
    for _ in range(steps):
        x = torch.randn(2, 3, 32, 48, generator=gen)
        y = torch.randint(0, seg.num_classes, (2, 32, 48), generator=gen)
        loss = nn.functional.cross_entropy(seg(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def _bn_state(seg: nn.Module) -> dict[str, torch.Tensor]:
    return {
        f"{name}.{k}": v.detach().clone()
        for name, m in seg.named_modules()
        if isinstance(m, nn.BatchNorm2d)
        for k, v in m.state_dict().items()
    }


def test_frozen_batch_norm_never_changes() -> None:
    torch.manual_seed(0)
    seg = build_segmenter("small", 4, bn_mode="frozen")
    before = _bn_state(seg)
    conv_before = seg.feature_extractor.conv1.weight.detach().clone()
    seg.train()
    bns = [m for m in seg.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(isinstance(m, FrozenBatchNorm2d) and not m.training for m in bns)
    assert not any(p.requires_grad for m in bns for p in m.parameters())
    _train_steps(seg)
    after = _bn_state(seg)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not torch.equal(conv_before, seg.feature_extractor.conv1.weight)  # it did train


def test_legacy_batch_norm_updates_running_stats_only() -> None:
    torch.manual_seed(0)
    seg = build_segmenter("small", 4, bn_mode="legacy")
    before = _bn_state(seg)
    _train_steps(seg)
    after = _bn_state(seg)
    stats = [k for k in before if k.endswith("running_mean")]
    affine = [k for k in before if k.endswith((".weight", ".bias"))]
    assert all(not torch.equal(before[k], after[k]) for k in stats)
    assert all(torch.equal(before[k], after[k]) for k in affine)


def test_default_batch_norm_modes() -> None:
    small_seg = build_segmenter("small", 3)
    assert all(
        p.requires_grad
        for m in small_seg.modules()
        if isinstance(m, nn.BatchNorm2d)
        for p in m.parameters()
    )
    r101 = resnet101().train()
    bns = [m for m in r101.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 104
    assert all(isinstance(m, FrozenBatchNorm2d) and not m.training for m in bns)


def test_freeze_feature_extractor_keeps_g_bitwise() -> None:
    torch.manual_seed(0)
    seg = build_segmenter("small", 4, cut="layer2")
    g_before = {k: v.detach().clone() for k, v in seg.feature_extractor.state_dict().items()}
    f_before = {k: v.detach().clone() for k, v in seg.classifier.state_dict().items()}
    assert not seg.feature_extractor_frozen
    seg.freeze_feature_extractor()
    assert seg.feature_extractor_frozen
    groups = seg.parameter_groups(0.01)
    g_params = {id(p) for p in seg.feature_extractor.parameters()}
    assert not any(id(p) in g_params for group in groups for p in group["params"])
    _train_steps(seg, steps=3)
    assert not any(m.training for m in seg.feature_extractor.modules())
    assert seg.classifier.training
    g_after = seg.feature_extractor.state_dict()
    assert all(torch.equal(g_before[k], g_after[k]) for k in g_before)
    f_after = seg.classifier.state_dict()
    changed = [k for k in f_before if not torch.equal(f_before[k], f_after[k])]
    assert any(k.startswith("head.") for k in changed)
    assert any(k.startswith("backbone.layer3") for k in changed)


def test_parameter_groups_lr() -> None:
    seg = build_segmenter("small", 4, multi_level=True)
    groups = seg.parameter_groups(0.01)
    by_name = {g["name"]: g for g in groups}
    assert by_name["backbone"]["lr"] == pytest.approx(0.01)
    assert by_name["classifier"]["lr"] == pytest.approx(0.1)
    assert by_name["classifier"]["lr_mult"] == 10.0
    heads = {id(p) for m in (seg.head, seg.aux_head) for p in m.parameters()}
    assert {id(p) for p in by_name["classifier"]["params"]} == heads
    grouped = [id(p) for g in groups for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in seg.parameters())
    assert seg.parameter_groups(1.0, classifier_lr_mult=5)[1]["lr"] == pytest.approx(5.0)


def test_parameter_groups_skip_frozen_batch_norm() -> None:
    r101 = build_segmenter("resnet101", 3, multi_level=True)
    assert r101.aux_head is not None
    assert r101.aux_head.conv2d_list[0].in_channels == 1024
    assert r101.head.conv2d_list[0].in_channels == 2048
    grouped = {id(p) for g in r101.parameter_groups(1.0) for p in g["params"]}
    bn_params = {
        id(p) for m in r101.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters()
    }
    assert bn_params and not grouped & bn_params
    assert "backbone.layer4.2.conv3.weight" in r101.state_dict()


def test_multi_level_outputs() -> None:
    torch.manual_seed(0)
    seg = build_segmenter("small", 6, multi_level=True).eval()
    x = torch.randn(2, 3, 40, 56)
    with torch.no_grad():
        main, aux = seg(x, with_aux=True)
        assert torch.equal(main, seg(x))
        layer3 = seg.feature_extractor.forward_with_taps(x, ("layer3",))[1]["layer3"]
        assert layer3.shape[1] == 192
        assert seg.aux_head is not None
        assert torch.equal(aux, upsample_logits(seg.aux_head(layer3), (40, 56)))
    assert aux.shape == main.shape == (2, 6, 40, 56)
    assert not torch.equal(main, aux)


def test_bad_settings_raise() -> None:
    with pytest.raises(ApodaError, match="cut 'layer4'"):
        build_segmenter("small", 4, cut="layer3", multi_level=True)
    with pytest.raises(ApodaError, match="multi_level"):
        build_segmenter("small", 4)(torch.randn(1, 3, 16, 16), with_aux=True)
    with pytest.raises(ApodaError, match=r"model\.arch: expected one of .*; got 'resnet50'"):
        build_segmenter("resnet50", 4)  # type: ignore[arg-type]
    with pytest.raises(ApodaError, match="bn_mode 'off'"):
        build_segmenter("small", 4, bn_mode="off")  # type: ignore[arg-type]
    with pytest.raises(ApodaError, match="cut 'layer5'"):
        build_segmenter("small", 4, cut="layer5")  # type: ignore[arg-type]
    with pytest.raises(ApodaError, match="num_classes"):
        build_segmenter("small", 0)
    with pytest.raises(ApodaError, match=r"\[B, 3, H, W\]"):
        build_segmenter("small", 4)(torch.randn(3, 16, 16))


def test_state_dict_round_trip() -> None:
    torch.manual_seed(0)
    a = build_segmenter("small", 4, cut="layer1").eval()
    torch.manual_seed(1)
    b = build_segmenter("small", 4, cut="layer1").eval()
    x = torch.randn(1, 3, 24, 40)
    assert not torch.equal(a(x), b(x))
    b.load_state_dict(a.state_dict())
    assert torch.equal(a(x), b(x))
    assert "backbone.layer1.0.conv1.weight" in a.state_dict()
    assert "backbone.layer4.1.conv2.weight" in a.state_dict()
    assert "head.conv2d_list.3.bias" in a.state_dict()


@pytest.mark.parametrize("arch", ["small", "vgg16"])
def test_checkpoint_keys_do_not_depend_on_the_cut(arch: str) -> None:
    """Parameter names are the network's own; G and F are views, so any cut loads any other."""
    keys = {
        cut: list(build_segmenter(arch, 3, cut=cut).state_dict())  # type: ignore[arg-type]
        for cut in ("pixel", "layer1", "layer2", "layer3", "layer4")
    }
    assert all(k == keys["layer4"] for k in keys.values())
    assert all(k.startswith(("backbone.", "head.")) for k in keys["layer4"])
    torch.manual_seed(0)
    layer4 = build_segmenter(arch, 3, cut="layer4").eval()  # type: ignore[arg-type]
    layer2 = build_segmenter(arch, 3, cut="layer2").eval()  # type: ignore[arg-type]
    layer2.load_state_dict(layer4.state_dict())
    x = torch.randn(1, 3, 32, 48)
    with torch.no_grad():
        assert torch.equal(layer2(x), layer4(x))
        assert torch.equal(layer2.classify(layer2.features(x), (32, 48)), layer4(x))


def _matches_stored_logits(segmenter: Segmenter, state: dict[str, Any]) -> None:
    """The segmenter's logits on the file's stored input equal the stored ones up to float32
    rounding (the bound `apoda export` checks with: convolution sums are reordered by the
    thread count and the CPU's kernels, so bit equality holds only on the machine that wrote
    the file); a wrongly mapped key moves logits by whole units."""
    x = state["reference"]["input"]
    with torch.no_grad():
        logits = segmenter.eval()(x)
    bound = rounding_tolerance(segmenter, x).value
    assert float((logits - state["reference"]["logits"]).abs().max()) <= bound


def test_a_checkpoint_of_the_cut_dependent_layout_still_loads() -> None:
    """A file written by apoda 0.1 (keys `feature_extractor.*`, `classifier.backbone.*`,
    `classifier.head.*`): its logits on its stored input are reproduced."""
    from apoda.checkpoints import load_checkpoint

    state = load_checkpoint(Path(__file__).parent / "fixtures" / "legacy_small_layer4.pt")
    weights = state["modules"]["segmenter"]
    assert any(k.startswith("feature_extractor.") for k in weights)
    for cut in ("layer4", "layer2"):
        seg = build_segmenter("small", 19, cut=cut, bn_mode="train")  # type: ignore[arg-type]
        seg.load_state_dict(weights)
        _matches_stored_logits(seg, state)


@pytest.mark.parametrize("arch", ["resnet101", "small"])
def test_frozen_batch_norm_holds_from_construction(arch: str) -> None:
    """No `.train()`/`.eval()` call first: a forward must not touch any running statistic."""
    torch.manual_seed(0)
    seg = build_segmenter(arch, 19, bn_mode="frozen")  # type: ignore[arg-type]
    stats = {k: v.clone() for k, v in seg.state_dict().items() if "running" in k}
    assert stats
    with torch.no_grad():
        seg(torch.randn(2, 3, 33, 41) * 3 + 1)
    after = seg.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in stats.items())
    seg.train()
    with torch.no_grad():
        seg(torch.randn(2, 3, 33, 41))
    assert all(torch.equal(v, seg.state_dict()[k]) for k, v in stats.items())


def test_discriminator_structure_and_shape() -> None:
    disc = Discriminator(19)
    convs = [m for m in disc.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [
        (19, 64),
        (64, 128),
        (128, 256),
        (256, 512),
        (512, 1),
    ]
    assert all((c.kernel_size, c.stride, c.padding) == ((4, 4), (2, 2), (1, 1)) for c in convs)
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.Sigmoid)) for m in disc.modules())
    relus = [m for m in disc.modules() if isinstance(m, nn.LeakyReLU)]
    assert relus and all(m.negative_slope == 0.2 for m in relus)
    out = disc(torch.randn(2, 19, 64, 128))
    assert out.shape == (2, 1, 2, 4)
    with pytest.raises(ApodaError, match="19"):
        disc(torch.randn(2, 3, 64, 128))


def test_discriminator_uses_leaky_relu_after_four_convs() -> None:
    torch.manual_seed(0)
    disc = Discriminator(2, ndf=4)
    x = torch.randn(1, 2, 32, 32)
    h = x
    for conv in (disc.conv1, disc.conv2, disc.conv3, disc.conv4):
        h = nn.functional.leaky_relu(conv(h), 0.2)
    assert torch.equal(disc(x), disc.classifier(h))


def test_a_checkpoint_of_the_previous_format_loads_with_its_config() -> None:
    """Its saved config holds every method's keys under `method` (the old single section):
    they are dropped on load, the weights are renamed, the logits are reproduced."""
    from apoda.inference import load_segmenter
    from apoda.methods.source_only import SourceOnlySettings

    path = Path(__file__).parent / "fixtures" / "legacy_small_layer4.pt"
    segmenter, config, state = load_segmenter(path)
    assert "lambda_adv" in state["config"]["method"]  # written by the old code
    assert isinstance(config.method, SourceOnlySettings)
    _matches_stored_logits(segmenter, state)
