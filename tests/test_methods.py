"""Each method takes a step on tiny tensors and moves the parameters it should, and only those."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

from apoda.config import load_config
from apoda.errors import ApodaError
from apoda.methods import METHODS, build_method
from apoda.models import build_segmenter

C = 5


def _batches(seed: int = 0) -> tuple[dict, dict]:  # type: ignore[type-arg]
    gen = torch.Generator().manual_seed(seed)
    src = {
        "image": torch.randn(2, 3, 32, 64, generator=gen),
        "label": torch.randint(0, C, (2, 32, 64), generator=gen),
    }
    tgt = {"image": torch.randn(2, 3, 32, 64, generator=gen), "label": torch.full((2, 32, 64), 255)}
    return src, tgt


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def _changed(before: dict[str, torch.Tensor], module: torch.nn.Module) -> set[str]:
    return {k for k, v in module.state_dict().items() if not torch.equal(v, before[k])}


def _method(name: str, *overrides: str):  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    cfg = load_config(None, [f"method.name={name}", "optim.lr=0.01", *overrides])
    seg = build_segmenter("small", C)
    return build_method(seg, cfg, torch.device("cpu"))


@pytest.mark.parametrize("name", ["source_only", "asn", "advent", "minent", "advent_minent"])
def test_baselines_train_g_and_f_and_their_discriminators(name: str) -> None:
    method = _method(name, "method.lambda_ent=0.001", "method.lambda_adv=0.1")
    before = {k: _snapshot(m) for k, m in method.modules.items()}
    log = method.train_step(*_batches(), 0)
    seg_changed = _changed(before["segmenter"], method.segmenter)
    assert any(k.startswith("feature_extractor.") for k in seg_changed)  # G trains
    assert any(k.startswith("classifier.head.") for k in seg_changed)  # F trains
    discs = [k for k in method.modules if k.startswith("discriminator")]
    assert bool(discs) == (name in ("asn", "advent", "advent_minent"))
    for key in discs:
        assert _changed(before[key], method.modules[key])
        assert f"loss/{key.replace('discriminator', 'd')}" in log
    # source only adds entropy when lambda_ent > 0 (Table 5's "S + Entropy"); ASN/AdvEnt do not
    assert ("loss/ent_target" in log) == (name in ("source_only", "minent", "advent_minent"))
    assert torch.isfinite(log["loss/total"])


def test_asn_generator_step_does_not_train_d_and_d_step_does_not_train_g() -> None:
    method = _method("asn", "method.lambda_adv=1.0")
    disc = method.modules["discriminator_main"]
    seg_opt = method.optimizers["segmenter"]
    disc_params = {id(p) for p in disc.parameters()}
    assert not any(id(p) in disc_params for g in seg_opt.param_groups for p in g["params"])
    method.train_step(*_batches(), 0)
    # after the step D's gradients come from its own loss only; G/F grads were not polluted by it
    assert all(p.requires_grad for p in disc.parameters())


def test_multi_level_asn_has_two_discriminators() -> None:
    torch.manual_seed(0)
    cfg = load_config(None, ["method.name=asn", "model.multi_level=true"])
    seg = build_segmenter("small", C, multi_level=True)
    method = build_method(seg, cfg, torch.device("cpu"))
    log = method.train_step(*_batches(), 0)
    assert {"discriminator_main", "discriminator_aux"} <= set(method.modules)
    assert {
        "loss/adv_main",
        "loss/adv_aux",
        "loss/d_main",
        "loss/d_aux",
        "loss/seg_source_aux",
    } <= set(log)


def test_weighted_ce_uses_the_class_weights() -> None:
    torch.manual_seed(0)
    cfg = load_config(None, ["method.name=asn", "method.seg_loss=wce"])
    src, tgt = _batches()
    losses = []
    for weights in (torch.ones(C), torch.tensor([10.0, 1, 1, 1, 1])):
        seg = build_segmenter("small", C)
        torch.manual_seed(0)
        method = build_method(copy.deepcopy(seg), cfg, torch.device("cpu"), weights)
        losses.append(method.train_step(src, tgt, 0)["loss/seg_source"].item())
    assert losses[0] != pytest.approx(losses[1])


def test_apoda_trains_f_and_d_only_and_eq9_adds_up() -> None:
    method = _method("apoda", "method.seg_loss=lovasz")
    before = {k: _snapshot(m) for k, m in method.modules.items()}
    log = method.train_step(*_batches(), 0)
    changed = _changed(before["segmenter"], method.segmenter)
    assert changed and all(k.startswith("classifier.") for k in changed)
    assert _changed(before["discriminator"], method.modules["discriminator"])
    a = method.config.method
    eq9 = (
        log["loss/seg_source_adv"]
        + log["loss/seg_source"]
        + a.alpha_cst * log["loss/cst"]
        + a.alpha_ent * log["loss/ent_target"]
        + a.alpha_ent_adv * log["loss/ent_target_adv"]
    )
    assert log["loss/total"].item() == pytest.approx(eq9.item(), rel=1e-6)
    assert log["loss/cst"].item() > 0  # the perturbation changed the target prediction


def test_apoda_attack_off_has_zero_consistency_loss() -> None:
    method = _method("apoda", "method.attack.name=none")
    log = method.train_step(*_batches(), 0)
    assert log["loss/cst"].item() == 0.0
    assert log["loss/seg_source"].item() == pytest.approx(log["loss/seg_source_adv"].item())


def test_minent_needs_an_entropy_weight() -> None:
    with pytest.raises(ApodaError, match="lambda_ent"):
        _method("minent", "method.lambda_ent=0")


def test_unknown_method_is_named() -> None:
    cfg = load_config(None, ["method.name=cycada"])
    with pytest.raises(ApodaError, match="unknown method 'cycada'"):
        build_method(build_segmenter("small", C), cfg, torch.device("cpu"))
    assert {"source_only", "asn", "advent", "apoda"} <= set(METHODS)


def test_adabn_replaces_bn_statistics_by_the_targets_and_trains_no_weight() -> None:
    method = _method("adabn", "model.bn_mode=train")
    src, tgt = _batches()
    tgt2 = {"image": _batches(seed=1)[1]["image"] * 3 + 2, "label": tgt["label"]}
    tgt["image"] = tgt["image"] * 3 + 2  # a target domain with other statistics
    before = {n: p.clone() for n, p in method.segmenter.named_parameters()}
    method.segmenter.train()
    method.train_step(src, tgt, 0)
    method.train_step(src, tgt2, 1)
    assert all(torch.equal(p, before[n]) for n, p in method.segmenter.named_parameters())
    modules = dict(method.segmenter.named_modules())
    conv = next(m for m in modules.values() if isinstance(m, torch.nn.Conv2d))
    first = next(m for m in modules.values() if isinstance(m, torch.nn.BatchNorm2d))
    # the first BN's running mean is now exactly the mean of its input over both target batches
    # (a cumulative average: neither the source statistics nor only the last batch)
    with torch.no_grad():
        conv_out = torch.stack([conv(t["image"]).mean((0, 2, 3)) for t in (tgt, tgt2)])
    expected = conv_out.mean(0)
    assert torch.allclose(first.running_mean, expected, atol=1e-5)
    assert int(first.num_batches_tracked) == 2


def test_adabn_needs_train_mode_batch_norm() -> None:
    with pytest.raises(ApodaError, match=r"bn_mode=train.*got bn_mode='frozen'"):
        _method("adabn", "model.bn_mode=frozen")


def test_apoda_warns_when_a_low_cut_puts_train_mode_batch_norm_into_f() -> None:
    def build(cut: str, bn_mode: str):  # type: ignore[no-untyped-def]
        cfg = load_config(
            None, ["method.name=apoda", f"model.cut={cut}", f"model.bn_mode={bn_mode}"]
        )
        seg = build_segmenter("small", C, cut=cut, bn_mode=bn_mode)  # type: ignore[arg-type]
        return build_method(seg, cfg, torch.device("cpu"))

    with pytest.warns(UserWarning, match=r"cut at layer2 puts \d+ batch-norm layers into F"):
        build("layer2", "train")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build("layer4", "train")  # F is the ASPP head: no batch norm in it
        build("layer2", "frozen")
