"""Self-training with cross-domain mixing (DACS): the ClassMix mask and mixed label, the
pseudo-label weight, the EMA teacher, the step, and a run that resumes to the same teacher."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from apoda.attacks import perturb_features
from apoda.checkpoints import load_checkpoint
from apoda.config import load_config
from apoda.configs import resolve_config
from apoda.engine.trainer import Trainer
from apoda.errors import ApodaError
from apoda.inference import load_segmenter
from apoda.methods import RunContext, build_method
from apoda.methods.dacs import DACS
from apoda.methods.parts import EMATeacher
from apoda.mixing import (
    blur_kernel_size,
    class_mix_masks,
    majority_cells,
    mix,
    mixed_pixel_weight,
    pseudo_labels,
    weighted_cross_entropy,
)
from apoda.models import Segmenter, build_segmenter
from conftest import TINY

C = 5
DEVICE = torch.device("cpu")


def test_class_mix_pastes_whole_classes_half_of_those_present() -> None:
    torch.manual_seed(0)
    labels = torch.tensor([[[0, 1, 2, 255], [3, 3, 1, 255]], [[4, 4, 4, 4], [4, 4, 255, 255]]])
    chosen_counts = torch.zeros(5)
    for _ in range(400):
        masks = class_mix_masks(labels)
        for label, mask in zip(labels, masks, strict=True):
            present = [c for c in label.unique().tolist() if c != 255]
            pasted = label[mask].unique().tolist()
            assert len(pasted) == math.ceil(len(present) / 2)  # half, rounded up
            for c in present:  # a class is pasted whole or not at all
                assert bool(mask[label == c].all()) == (c in pasted)
            assert not mask[label == 255].any()
        chosen_counts += torch.bincount(labels[0][masks[0]].unique(), minlength=5)[:5].bool()
    # image 0 holds 4 classes, 2 are drawn: each is pasted in half of the draws
    share = chosen_counts[:4] / 400
    assert ((share - 0.5).abs() < 4 * math.sqrt(0.25 / 400)).all(), share  # 4 sigma


def test_the_mixed_label_is_the_source_where_pasted_and_the_pseudo_label_elsewhere() -> None:
    mask = torch.tensor([[[True, False], [False, True]]])
    source = torch.tensor([[[1, 2], [3, 4]]])
    pseudo = torch.tensor([[[7, 8], [9, 6]]])
    assert mix(mask, source, pseudo).tolist() == [[[1, 8], [9, 4]]]
    images = mix(mask, torch.ones(1, 3, 2, 2), torch.zeros(1, 3, 2, 2))
    assert images[0, :, 0, 0].tolist() == [1, 1, 1] and images[0, :, 0, 1].tolist() == [0, 0, 0]


def test_the_pseudo_label_weight_is_the_share_of_confident_pixels_of_the_whole_batch() -> None:
    confident = torch.tensor([10.0, 0, 0])[None, :, None, None].expand(1, 3, 2, 2)
    unsure = torch.zeros(1, 3, 2, 2)
    logits = torch.cat([confident, unsure])  # image 0: all pixels confident, image 1: none
    labels, weight = pseudo_labels(logits, threshold=0.968)
    p_top = 1 / (1 + 2 * math.exp(-10))  # the confident pixels' top probability
    assert p_top >= 0.968 and weight.item() == 0.5  # over both images, not per image
    assert labels[0].eq(0).all()
    _, none = pseudo_labels(logits, threshold=p_top + 1e-6)
    assert none.item() == 0.0


def test_mixed_pixel_weight_is_one_where_pasted_and_zero_in_ignored_rows() -> None:
    mask = torch.zeros(1, 4, 3, dtype=torch.bool)
    mask[0, 0, 0] = mask[0, 2, 1] = True
    weight = mixed_pixel_weight(mask, torch.tensor(0.3), ignore_top=1, ignore_bottom=1)
    expected = torch.full((1, 4, 3), 0.3)
    expected[:, 0] = expected[:, 3] = 0.0
    expected[0, 0, 0] = expected[0, 2, 1] = 1.0  # pasted source pixels keep their labels' weight
    assert torch.equal(weight, expected)


def test_weighted_cross_entropy_averages_over_every_pixel() -> None:
    logits = torch.randn(2, C, 3, 4, dtype=torch.float64)
    labels = torch.randint(0, C, (2, 3, 4))
    labels[0, 0, 0] = 255
    weight = torch.rand(2, 3, 4, dtype=torch.float64)
    direct = 0.0
    for b in range(2):
        for y in range(3):
            for x in range(4):
                if labels[b, y, x] != 255:
                    logp = torch.log_softmax(logits[b, :, y, x], 0)[labels[b, y, x]]
                    direct += -float(logp) * float(weight[b, y, x])
    got = weighted_cross_entropy(logits.float(), labels, weight.float())
    assert got.item() == pytest.approx(direct / 24, rel=1e-5)  # float32 of a 24-term sum


def test_blur_kernel_is_odd_and_about_a_tenth_of_the_side() -> None:
    assert [blur_kernel_size(n) for n in (32, 64, 128, 512, 1024)] == [3, 7, 13, 51, 103]


def test_the_ema_teacher_follows_the_student() -> None:
    torch.manual_seed(0)
    student = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 1), torch.nn.BatchNorm2d(3))
    teacher = EMATeacher(student)
    before = {k: v.clone().double() for k, v in teacher.network.state_dict().items()}
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
        student[1].running_mean.add_(2.0)
    assert teacher.update(student, iteration=1, alpha=0.99) == 0.5  # min(1 - 1/2, 0.99)
    after, now = teacher.network.state_dict(), student.state_dict()
    for key in ("0.weight", "0.bias", "1.weight", "1.bias"):
        expected = 0.5 * before[key] + 0.5 * now[key].double()
        assert torch.allclose(after[key].double(), expected, rtol=0, atol=2**-22), key
    assert torch.equal(after["1.running_mean"], now["1.running_mean"])  # buffers follow
    assert teacher.update(student, iteration=1000, alpha=0.99) == 0.99
    assert not any(p.requires_grad for p in teacher.network.parameters())


def test_a_dacs_step_trains_the_student_and_moves_the_teacher_only_by_ema() -> None:
    torch.manual_seed(0)
    config = load_config(None, ["method.name=dacs", "optim.lr=0.01"])
    method = build_method(build_segmenter("small", C), config, torch.device("cpu"))
    gen = torch.Generator().manual_seed(1)
    source = {
        "image": torch.randn(2, 3, 32, 64, generator=gen),
        "label": torch.randint(0, C, (2, 32, 64), generator=gen),
    }
    target = {"image": torch.randn(2, 3, 32, 64, generator=gen)}
    teacher0 = {k: v.clone() for k, v in method.modules["teacher"].state_dict().items()}
    student0 = {k: v.clone() for k, v in method.segmenter.state_dict().items()}
    log = method.train_step(source, target, 0)
    assert {"loss/seg_source", "loss/seg_mixed", "self_training/pseudo_weight"} <= set(log)
    teacher = method.modules["teacher"].state_dict()
    assert all(torch.equal(teacher[k], v) for k, v in teacher0.items())  # no EMA at step 0
    changed = [
        k for k, v in method.segmenter.state_dict().items() if not torch.equal(v, student0[k])
    ]
    assert any(k.startswith("backbone.") for k in changed)  # G trains, unlike APODA
    method.train_step(source, target, 1)  # the teacher is now the mean of the two students
    assert not torch.equal(method.modules["teacher"].state_dict()["head.conv2d_list.0.weight"],
                           teacher0["head.conv2d_list.0.weight"])  # fmt: skip
    assert "teacher" in method.state_dict()["modules"] and method.evaluated == "segmenter"


def _perturbing_step(lam: float) -> tuple[Any, dict[str, Any], Segmenter]:
    """One DACS step (iteration 0) on fixed tiny data with `perturbation_lambda` = lam, the same
    initial weights and RNG state for every lam; returns the method, the step's log and inputs
    (mixed images, labels, weights), and the segmenter as it was before the step."""
    torch.manual_seed(0)
    # tau 0.22: about 2/3 of the untrained teacher's pixels are confident, so pseudo-labelled
    # pixels weigh in as well as pasted ones
    overrides = ["method.name=dacs", "optim.lr=0.01", "method.pseudo_threshold=0.22"]
    overrides.append(f"method.perturbation_lambda={lam}")
    method = build_method(build_segmenter("small", C), load_config(None, overrides), DEVICE)
    gen = torch.Generator().manual_seed(1)
    source = {
        "image": torch.randn(2, 3, 32, 64, generator=gen),
        "label": torch.randint(0, C, (2, 32, 64), generator=gen),
    }
    target = {"image": torch.randn(2, 3, 32, 64, generator=gen)}
    before = copy.deepcopy(method.segmenter)
    seen: dict[str, Any] = {}
    mixed_batch = method._mixed_batch

    def recording(*args: Any) -> Any:
        seen["images"], seen["labels"], seen["weights"] = out = mixed_batch(*args)
        return out

    method._mixed_batch = recording
    torch.manual_seed(2)  # the same ClassMix and photometric draws for every lam
    seen["log"] = method.train_step(source, target, 0)
    method._mixed_batch = mixed_batch
    seen["source"], seen["target"] = source, target
    return method, seen, before


def test_the_feature_perturbation_trains_f_on_perturbed_mixed_features_and_never_g() -> None:
    lam = 0.5
    plain, plain_seen, _ = _perturbing_step(0.0)
    method, seen, before = _perturbing_step(lam)
    log = seen["log"]
    assert "loss/seg_mixed_adv" not in plain_seen["log"]
    assert not any(k.startswith("attack/") for k in plain_seen["log"])
    assert {"attack/mixed/grad_seg/k2", "attack/mixed/grad_l2/k2", "attack/mixed/l2/k2"} <= set(log)
    assert not any(k.startswith("attack/mixed/grad_adv") for k in log)  # DACS has no D
    assert torch.equal(seen["images"], plain_seen["images"])  # the same draws
    assert 0 < log["self_training/pseudo_weight"].item() < 1
    # (c) the new term is lam * weighted CE of F on f*, f* the attack on G(mixed) (pre-step
    # weights), with the mixed labels; the attack itself is checked against Eq. (6) in
    # tests/test_attacks.py.
    images, labels, weights = seen["images"], seen["labels"], seen["weights"]
    size = tuple(images.shape[2:])
    with torch.no_grad():
        features = before.features(images)
    f_star, _ = perturb_features(
        before.classifier, None, features, "source", method.settings.attack, size, labels=labels
    )
    with torch.no_grad():
        logits = before.classify(f_star, size)
    ce = torch.nn.functional.cross_entropy(logits, labels, ignore_index=255, reduction="none")
    expected = (ce * weights).mean()
    assert log["loss/seg_mixed_adv"].item() == pytest.approx(expected.item(), rel=1e-6)
    total = log["loss/seg_source"] + log["loss/seg_mixed"] + lam * log["loss/seg_mixed_adv"]
    assert log["loss/total"].item() == pytest.approx(total.item(), rel=1e-6)
    assert log["loss/seg_mixed"].item() == plain_seen["log"]["loss/seg_mixed"].item()
    # (b) f* is detached: G's gradient is the plain step's, bit for bit; F's is not
    g_names = {n for n, _ in method.segmenter.feature_extractor.named_parameters()}
    assert g_names
    grads = {n: p.grad for n, p in method.segmenter.feature_extractor.named_parameters()}
    plain_grads = {n: p.grad for n, p in plain.segmenter.feature_extractor.named_parameters()}
    for name in g_names:
        assert torch.equal(grads[name], plain_grads[name]), name
    f_grads = [p.grad for p in method.segmenter.classifier.parameters()]
    f_plain = [p.grad for p in plain.segmenter.classifier.parameters()]
    assert not all(torch.equal(a, b) for a, b in zip(f_grads, f_plain, strict=True))
    # (a) the teacher still follows the student: at iteration 1 the mean of it and the student
    teacher0 = [p.clone() for p in method.modules["teacher"].parameters()]
    student1 = [p.detach().clone() for p in method.segmenter.parameters()]
    method.train_step(seen["source"], seen["target"], 1)
    for t0, s1, t in zip(teacher0, student1, method.modules["teacher"].parameters(), strict=True):
        assert torch.equal(t, t0.mul_(0.5).add_(s1, alpha=0.5))
    assert not all(torch.equal(a, b) for a, b in zip(teacher0, student1, strict=True))


def test_the_feature_perturbation_refuses_a_multi_level_segmenter() -> None:
    config = load_config(None, ["method.name=dacs", "method.perturbation_lambda=1"])
    segmenter = build_segmenter("small", C, multi_level=True)
    with pytest.raises(ApodaError, match=r"method\.perturbation_lambda > 0 needs model\.multi"):
        build_method(segmenter, config, DEVICE)
    with pytest.raises(ApodaError, match="perturbation_lambda"):
        load_config(None, ["method.name=dacs", "method.perturbation_lambda=-1"])


def _run(out: Path, iterations: int, *extra: str) -> Trainer:
    cfg = load_config(
        resolve_config("minicity/dacs"),
        [*TINY, f"train.iterations={iterations}", "train.eval_every=0", "train.checkpoint_every=2",
         "train.samples=0", *extra],
    )  # fmt: skip
    return Trainer(cfg, out, resume=(out / "checkpoints").is_dir())


@pytest.mark.slow
def test_a_killed_dacs_run_resumes_to_the_same_student_and_teacher(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _run(tmp_path / "whole", 6).fit()
    original = DACS.train_step

    def dying(self: DACS, source: Any, target: Any, iteration: int) -> Any:
        if iteration == 5:
            raise KeyboardInterrupt  # killed during iteration 5, after the checkpoint at 4
        return original(self, source, target, iteration)

    monkeypatch.setattr(DACS, "train_step", dying)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "killed", 6).fit()
    monkeypatch.setattr(DACS, "train_step", original)
    _run(tmp_path / "killed", 6).fit()
    whole = load_checkpoint(tmp_path / "whole" / "checkpoints" / "last.pt")["modules"]
    killed = load_checkpoint(tmp_path / "killed" / "checkpoints" / "last.pt")["modules"]
    for module in ("segmenter", "teacher"):
        for key, value in whole[module].items():
            assert torch.equal(value, killed[module][key]), (module, key)
    # evaluation (and `apoda eval`) score the network the settings name
    _run(tmp_path / "t", 2, "method.evaluate=teacher").fit()
    state = load_checkpoint(tmp_path / "t" / "checkpoints" / "last.pt")
    segmenter, _, _ = load_segmenter(tmp_path / "t")
    assert state["evaluated"] == "teacher"
    for key, value in segmenter.state_dict().items():
        assert torch.equal(value, state["modules"]["teacher"][key]), key


def test_majority_cells_follow_the_min_ratio() -> None:
    labels = torch.full((1, 4, 8), 255)
    labels[0, :2, :2] = 3  # a whole cell of class 3
    labels[0, :2, 2:4] = torch.tensor([[5, 5], [5, 1]])  # 3/4 of class 5
    labels[0, 2:, :2] = torch.tensor([[2, 2], [1, 1]])  # a tie at 1/2
    cells = majority_cells(labels, cell=2, min_ratio=0.75, num_classes=6)
    assert cells.tolist() == [[[3, 5, 255, 255], [255, 255, 255, 255]]]


def _feature_distance_method(tmp_path: Path, classes: str) -> Any:
    torch.manual_seed(0)
    seg = build_segmenter("small", C)
    weights = tmp_path / "imagenet.pth"  # stands in for ImageNet weights: another init
    torch.save(build_segmenter("small", C).backbone.state_dict(), weights)
    overrides = ["method.name=dacs", "method.imnet_feature_dist_lambda=0.005", classes]
    config = load_config(None, [*overrides, f"model.pretrained={weights}"])
    method = build_method(seg, config, torch.device("cpu"))
    method.prepare(RunContext(tuple(f"c{i}" for i in range(C)), {}))
    return method


def test_the_feature_distance_is_the_mean_l2_over_cells_of_the_named_classes(
    tmp_path: Path,
) -> None:
    method = _feature_distance_method(tmp_path, "method.imnet_feature_dist_classes=[c1, c3]")
    fd = method.feature_distance
    image = torch.randn(1, 3, 32, 64)
    labels = torch.zeros(1, 32, 64, dtype=torch.long)
    labels[0, :8, :8] = 1  # one stride-8 cell of class 1
    labels[0, 8:16, 8:16] = 3  # one of class 3
    features = method.segmenter.features(image).detach()
    with torch.no_grad():
        reference = fd.network.features(image)
    per_cell = (features.double() - reference.double()).norm(dim=1)[0]
    expected = (per_cell[0, 0] + per_cell[1, 1]) / 2
    # float32: a norm of C positive squared terms is within (C + 4) u of the exact one
    rel = (features.shape[1] + 4) * 2**-24
    assert float(fd(features, image, labels)) == pytest.approx(float(expected), rel=rel)
    labels.zero_()
    assert float(fd(features, image, labels)) == 0.0  # no cell of the named classes
    assert float(fd(reference, image, torch.ones_like(labels))) == 0.0  # G = its ImageNet copy


def test_the_feature_distance_needs_imagenet_weights_and_known_classes(tmp_path: Path) -> None:
    with pytest.raises(ApodaError, match="unknown classes \\['car'\\]"):
        _feature_distance_method(tmp_path, "method.imnet_feature_dist_classes=[c1, car]")
    config = load_config(None, ["method.name=dacs", "method.imnet_feature_dist_lambda=0.005"])
    method = build_method(build_segmenter("small", C), config, torch.device("cpu"))
    with pytest.raises(ApodaError, match="needs an ImageNet-pretrained G"):
        method.prepare(RunContext(tuple(f"c{i}" for i in range(C)), {}))


def test_the_daformer_config_trains_on_gta5_and_cityscapes_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`apoda train gta5_to_cityscapes/daformer` on tiny files in the datasets' own formats:
    rare-class draws reach the crop with their class (source items only), the feature distance
    is a term of the loss, and the run finishes with its metrics."""
    from apoda.cli import main
    from apoda.data import transforms
    from test_datasets import make_cityscapes, make_gta5

    gta = make_gta5(tmp_path / "gta5", n=4)
    cityscapes = make_cityscapes(make_cityscapes(tmp_path / "cs"), "train", labels=False)
    weights = tmp_path / "imagenet.pth"
    torch.manual_seed(0)
    torch.save(build_segmenter("small", 19).backbone.state_dict(), weights)
    wanted: list[int | None] = []
    crop = transforms._crop
    monkeypatch.setattr(
        transforms,
        "_crop",
        lambda *a: wanted.append(a[-1]) or crop(*a),  # type: ignore[func-returns-value]
    )
    out = tmp_path / "run"
    args = [
        "train",
        "gta5_to_cityscapes/daformer",
        f"data.source_root={gta}",
        f"data.target_root={cityscapes}",
        "model.arch=small",
        f"model.pretrained={weights}",
        "data.source_size=[32,24]",
        "data.crop=[16,16]",
        "data.target_size=[32,16]",
        "data.num_workers=0",
        "method.pseudo_ignore_top=1",
        "method.pseudo_ignore_bottom=2",
        "train.iterations=2",
        "train.eval_every=2",
        "train.amp=false",
        "train.progress=false",
        "train.samples=0",
    ]
    assert main([*args, "--out", str(out)]) == 0
    # each step crops a batch of 2 source images (drawn for a class) and 2 target images
    classes = [c for c in wanted if c is not None]
    assert len(classes) == 4 and wanted.count(None) == 4
    assert set(classes) <= {0, 9, 13, 18}  # road, terrain, car, bicycle: what the files hold
    logged = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert logged[0]["values"]["loss/imnet_feature_dist"] > 0
    assert "miou" in json.loads((out / "metrics.json").read_text())


@pytest.mark.parametrize("family", ["gta5_to_cityscapes", "synthia_to_cityscapes"])
def test_the_daformer_configs_build_adamw_and_a_feature_distance_on_their_own_classes(
    family: str, tmp_path: Path
) -> None:
    """DAFormer's strategies on DACS: AdamW (head at 10x), the distance on thing classes that
    the family's scheme has (SYNTHIA's 16 lack truck and train: naming them would be an error
    at the start of the run), rare-class sampling and warmup."""
    from apoda.data.classes import get_scheme

    weights = tmp_path / "imagenet.pth"
    config = load_config(
        resolve_config(f"{family}/daformer"), ["model.arch=small", f"model.pretrained={weights}"]
    )
    names = get_scheme(config.data.scheme).class_names
    torch.manual_seed(0)
    segmenter = build_segmenter("small", len(names))
    torch.save(build_segmenter("small", len(names)).backbone.state_dict(), weights)
    method = build_method(segmenter, config, torch.device("cpu"), weights)
    method.prepare(RunContext(names, {}))
    assert method.feature_distance is not None and method.feature_distance.classes is not None
    things = [names[i] for i in method.feature_distance.classes]
    assert things[:4] == ["traffic light", "traffic sign", "person", "rider"]
    assert ("truck" in things) == (family == "gta5_to_cityscapes")
    optimizer = method.optimizers["segmenter"]
    assert isinstance(optimizer, torch.optim.AdamW)
    assert [g["lr"] for g in optimizer.param_groups] == [6e-5, 6e-5 * 10.0]  # head at x10
    assert all(
        g["betas"] == (0.9, 0.999) and g["weight_decay"] == 0.01 for g in optimizer.param_groups
    )
    assert config.data.rare_class_sampling and config.optim.warmup_iterations == 1500
    assert (config.data.rcs_min_crop_ratio, config.data.crop_cat_max_ratio) == (0.5, 0.75)
    assert method.settings.ema_alpha == 0.999 and method.settings.pseudo_ignore_bottom == 120
