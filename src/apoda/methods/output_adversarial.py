"""Output-space adversarial baselines: AdaptSegNet ("ASN", D on softmax outputs), AdvEnt (D on
the weighted self-information map), MinEnt and AdvEnt+MinEnt; ASN + weighted CE and ASN + Lovász
are ASN with another `seg_loss`. The four share one settings dataclass."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from torch import Tensor

from apoda.config import at_least_one, check_fields, non_negative
from apoda.errors import ApodaError
from apoda.losses import SegLossName, domain_loss, entropy_loss, self_information
from apoda.methods.base import Batch, LoopSettings, Method, RunContext, StepLog
from apoda.methods.parts import SupervisedLoss, new_discriminator, target_outputs
from apoda.models import Segmenter
from apoda.registry import register_method


@dataclass
class OutputAdversarialSettings:
    """Output-space methods: AdaptSegNet (asn), AdvEnt, MinEnt and AdvEnt+MinEnt. D (of width
    `discriminator_width`) at `lambda_adv` (`lambda_adv_aux` on the aux head), entropy at
    `lambda_ent` for the MinEnt variants."""

    name: Literal["asn", "advent", "minent", "advent_minent"] = "asn"
    seg_loss: SegLossName = "ce"
    lambda_seg_aux: float = 0.1
    lambda_ent: float = 0.0
    discriminator_width: int = 64
    lambda_adv: float = 0.001
    lambda_adv_aux: float = 0.0002

    def __post_init__(self) -> None:
        check_fields(self, "method")
        non_negative(self, "method", ["lambda_seg_aux", "lambda_ent", "lambda_adv"])
        non_negative(self, "method", ["lambda_adv_aux"])
        at_least_one(self, "method", ["discriminator_width"])


@register_method("asn", OutputAdversarialSettings)
class ASN(Method):
    """G and F learn L_seg(source) + lambda_adv * (fool D on target outputs); D learns Eq. (2).
    `lambda_ent > 0` adds target entropy (Eq. 8) to any of them (Table 5's "ASN + entropy")."""

    name = "asn"
    settings: OutputAdversarialSettings
    discriminator_input = "softmax"
    adversarial = True
    needs_entropy = False

    def __init__(self, segmenter: Segmenter, settings: Any, loop: LoopSettings) -> None:
        super().__init__(segmenter, settings, loop)
        if self.needs_entropy and settings.lambda_ent <= 0:
            raise ApodaError(
                f"method {self.name} needs method.lambda_ent > 0 (the field uses 0.001)"
            )
        self.supervised = SupervisedLoss(segmenter, settings.seg_loss, settings.lambda_seg_aux)
        self.optimizers["segmenter"] = self.segmenter_optimizer()
        heads = ["main", "aux"] if segmenter.aux_head is not None else ["main"]
        if self.adversarial:
            for head in heads:
                disc, opt = new_discriminator(
                    segmenter.num_classes, settings.discriminator_width, loop.optim, self.device
                )
                self.modules[f"discriminator_{head}"] = disc
                self.optimizers[f"discriminator_{head}"] = opt

    def prepare(self, context: RunContext) -> None:
        self.supervised.prepare(context.class_names, context.source_pixel_fraction)

    def d_input(self, logits: Tensor) -> Tensor:
        """What D sees: the softmax (ASN) or the self-information map (AdvEnt)."""
        logits = logits.float()
        if self.discriminator_input == "self_information":
            return self_information(logits)
        return logits.softmax(1)

    def train_step(self, source: Batch, target: Batch, iteration: int) -> StepLog:
        log: StepLog = {}
        method = self.settings
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)
        discs = {
            k.removeprefix("discriminator_"): m for k, m in self.modules.items() if k != "segmenter"
        }
        for disc in discs.values():
            disc.requires_grad_(False)
        with self.autocast():
            loss, logits_s, aux_s = self.supervised(source["image"], source["label"], log)
            logits_t, aux_t = target_outputs(self.segmenter, target["image"])
            outputs = {"main": (logits_s, logits_t), "aux": (aux_s, aux_t)}
            weights = {"main": method.lambda_adv, "aux": method.lambda_adv_aux}
            for head, disc in discs.items():
                # The generator's target loss uses the source label (fool D).
                adv = domain_loss(disc(self.d_input(outputs[head][1])).float(), "source")
                log[f"loss/adv_{head}"] = adv.detach()
                loss = loss + weights[head] * adv
            if method.lambda_ent > 0:
                ent = entropy_loss(logits_t.float())  # Eq. (8)
                log["loss/ent_target"] = ent.detach()
                loss = loss + method.lambda_ent * ent
        self.backward_step(loss, log, ["segmenter"])
        for head, disc in discs.items():
            disc.requires_grad_(True)
            src, tgt = outputs[head]
            with self.autocast():
                d_src = disc(self.d_input(src.detach())).float()
                d_tgt = disc(self.d_input(tgt.detach())).float()
            # Eq. (2), each term halved as in the reference code.
            loss_d = 0.5 * domain_loss(d_src, "source") + 0.5 * domain_loss(d_tgt, "target")
            log[f"loss/d_{head}"] = loss_d.detach()
            self.backward_step(
                loss_d, {f"loss/d_{head}": log[f"loss/d_{head}"]}, [f"discriminator_{head}"]
            )
        log["loss/total"] = loss.detach()
        return log


@register_method("advent", OutputAdversarialSettings)
class AdvEnt(ASN):
    """AdvEnt: D on -p log p / log C instead of the softmax."""

    name = "advent"
    discriminator_input = "self_information"


@register_method("minent", OutputAdversarialSettings)
class MinEnt(ASN):
    """MinEnt: entropy minimisation on target (lambda_ent), no discriminator."""

    name = "minent"
    adversarial = False
    needs_entropy = True


@register_method("advent_minent", OutputAdversarialSettings)
class AdvEntMinEnt(AdvEnt):
    """AdvEnt + MinEnt."""

    name = "advent_minent"
    needs_entropy = True
