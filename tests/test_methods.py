"""Each method takes a step on tiny tensors and moves the parameters it should, and only those."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

from apoda.config import load_config
from apoda.errors import ApodaError
from apoda.losses import class_weights
from apoda.methods import METHODS, RunContext, build_method
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
    adv = [] if name == "source_only" else ["method.lambda_adv=0.1"]
    method = _method(name, "method.lambda_ent=0.001", *adv)
    before = {k: _snapshot(m) for k, m in method.modules.items()}
    log = method.train_step(*_batches(), 0)
    seg_changed = _changed(before["segmenter"], method.segmenter)
    assert any(k.startswith("backbone.") for k in seg_changed)  # G trains
    assert any(k.startswith("head.") for k in seg_changed)  # F trains
    discs = [k for k in method.modules if k.startswith("discriminator")]
    assert bool(discs) == (name in ("asn", "advent", "advent_minent"))
    for key in discs:
        assert _changed(before[key], method.modules[key])
        assert f"loss/{key.replace('discriminator', 'd')}" in log
    # lambda_ent > 0 adds target entropy to every method (Table 5's "S + entropy" and
    # "ASN + Lovász + entropy"): a weight the method is given is a weight it uses
    assert "loss/ent_target" in log
    assert torch.isfinite(log["loss/total"])


@pytest.mark.parametrize("name", ["asn", "advent"])
def test_output_adversarial_entropy_weight_changes_the_step(name: str) -> None:
    """ASN/AdvEnt with `method.lambda_ent` train entropy: the total is L_seg + adv + ent."""
    src, tgt = _batches()
    without = _method(name).train_step(src, tgt, 0)
    with_ent = _method(name, "method.lambda_ent=0.5").train_step(src, tgt, 0)
    assert "loss/ent_target" not in without
    expected = (
        with_ent["loss/seg_source"]
        + 0.001 * with_ent["loss/adv_main"]
        + 0.5 * with_ent["loss/ent_target"]
    )
    # float32 sum of three terms: at most a few ulps of the total apart
    assert with_ent["loss/total"].item() == pytest.approx(expected.item(), rel=4 * 2**-23)


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


def test_weighted_ce_takes_its_class_weights_from_the_source_statistics() -> None:
    torch.manual_seed(0)
    cfg = load_config(None, ["method.name=asn", "method.seg_loss=wce"])
    src, tgt = _batches()
    names = tuple(f"c{i}" for i in range(C))
    seg = build_segmenter("small", C)
    losses = []
    for fractions in ([0.2] * C, [0.01, 0.4, 0.3, 0.2, 0.09]):
        method = build_method(copy.deepcopy(seg), cfg, torch.device("cpu"))
        method.prepare(RunContext(names, dict(zip(names, fractions, strict=True))))
        assert method.supervised.class_weights is not None
        assert torch.equal(method.supervised.class_weights, class_weights(fractions))
        losses.append(method.train_step(src, tgt, 0)["loss/seg_source"].item())
    assert losses[0] != pytest.approx(losses[1])


def test_a_method_saves_and_restores_its_own_state(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """state_dict/load_state_dict round-trip modules, optimisers and counters: the next step
    from the restored method equals the next step of the original."""
    src, tgt = _batches()
    first = _method("asn", "method.lambda_adv=0.1")
    first.train_step(src, tgt, 0)
    first.skipped_steps = 3
    state = copy.deepcopy(first.state_dict())
    second = _method("asn", "method.lambda_adv=0.1")
    second.load_state_dict(state, tmp_path / "x.pt")
    assert second.skipped_steps == 3
    a, b = first.train_step(src, tgt, 1), second.train_step(src, tgt, 1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    for name in first.modules:
        sa, sb = first.modules[name].state_dict(), second.modules[name].state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_apoda_trains_f_and_d_only_and_eq9_adds_up() -> None:
    method = _method("apoda", "method.seg_loss=lovasz")
    before = {k: _snapshot(m) for k, m in method.modules.items()}
    log = method.train_step(*_batches(), 0)
    changed = _changed(before["segmenter"], method.segmenter)
    assert changed and all(k.startswith("head.") for k in changed)  # F = the ASPP head
    assert _changed(before["discriminator"], method.modules["discriminator"])
    a = method.settings
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


def test_unknown_method_is_named_at_load_time() -> None:
    with pytest.raises(ApodaError, match="cycada"):
        load_config(None, ["method.name=cycada"])
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
        outs = [conv(t["image"]) for t in (tgt, tgt2)]
    expected = torch.stack([o.mean((0, 2, 3)) for o in outs]).mean(0)
    # BN's statistics kernel and mean() sum a channel's n = N*H*W values in other orders, each
    # within (n-1)*2^-24*sum|x| of the exact sum; averaging the 2 batches halves exactly.
    n = outs[0].numel() // outs[0].shape[1]
    mean_abs = torch.stack([o.abs().mean((0, 2, 3)) for o in outs]).amax(0)
    bound = 2 * (n - 1) * 2.0**-24 * mean_abs
    assert ((first.running_mean - expected).abs() <= bound).all()
    assert int(first.num_batches_tracked) == 2


def test_adabn_needs_train_mode_batch_norm() -> None:
    with pytest.raises(ApodaError, match=r"bn_mode=train.*got bn_mode='frozen'"):
        _method("adabn", "model.bn_mode=frozen")


def test_apoda_warns_when_a_low_cut_puts_train_mode_batch_norm_into_f() -> None:
    def build(cut: str, bn_mode: str):  # type: ignore[no-untyped-def]
        cfg = load_config(
            None,
            [
                "method.name=apoda",
                f"model.cut={cut}",
                f"model.bn_mode={bn_mode}",
                "model.init_from=step1.pt",  # read by the model builder, not by the method
            ],
        )
        seg = build_segmenter("small", C, cut=cut, bn_mode=bn_mode)  # type: ignore[arg-type]
        return build_method(seg, cfg, torch.device("cpu"))

    with pytest.warns(UserWarning, match=r"cut at layer2 puts \d+ batch-norm layers into F"):
        build("layer2", "train")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build("layer4", "train")  # F is the ASPP head: no batch norm in it
        build("layer2", "frozen")
