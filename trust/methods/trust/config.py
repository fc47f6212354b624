"""TRUST's knobs (`finetune.method: {name: trust, ...}`); where its neurons are found is `localize`."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from trust.methods.config import FORGET_TARGET_MOVED, ForgetTarget, ForgetTargetKnobs, MethodConfig


class TrustConfig(MethodConfig, ForgetTargetKnobs):
    """Dynamic-mask selective fine-tuning of cross-attention rows, CIP or CSR regulariser."""

    name: Literal["trust"] = "trust"
    loss: Literal["cip", "csr"] = Field("cip", description="CIP (hard, L1 on masked weights) or CSR (soft, "
                                                           "Hessian-based sensitivity penalty)")
    beta: float = Field(1e-5, ge=0, description="weight of the CIP/CSR term; CIP's L1 sum grows with the mask, and on "
                                                "the world's masks 1e-4 made it 4x the forget loss (plain-background "
                                                "conditionals never moved); 1e-5 keeps it below L_prev at the start")
    reestimate_every: int = Field(20, ge=1, description="k, re-estimate the mask every k steps; on the world k=5 churned "
                                                        "the mask and the target rate swung (0.31 -> 0.78 in 50 steps), "
                                                        "k=20 descended steadily and is 20% faster")
    dynamic: bool = Field(True, description="false keeps the initial mask (static, SalUn-like)")
    forget_target: ForgetTarget = Field(
        "anchor_negative", description="as for every fine-tuning method (trust/methods/config.py); TRUST's default "
        "pushes away from the concept from the anchor: with the plain anchor a combination (yellow triangle) and a "
        "conditional (square on stripes) never reached the bar in 300 s, pushed they did in 80-400 steps "
        "(bench/results/concept_set.md)")

    target_pool: int = Field(0, ge=0, description="rows whose frozen-model targets are kept and drawn again "
                             "(trust/methods/target_pool.py), for the forget batch and the preservation term each; "
                             "0: every row fresh at every step. The first target_pool / batch_size steps are the same "
                             "either way")
    target_fresh: float = Field(0.25, gt=0, le=1, description="with target_pool: the share of each batch drawn "
                                "afresh (the frozen model runs on these only); the rest come from the pool")

    adversarial: ClassVar[bool] = True
    replay: ClassVar[bool] = True
    implementation: ClassVar[str] = "trust.methods.trust.method:TrustMethod"
    starts_from_localize: ClassVar[bool] = True
    moved_from: ClassVar[dict[str, str]] = {"loss": "loss", "beta": "beta", "reestimate_every": "reestimate_every",
                                            "dynamic": "dynamic", **FORGET_TARGET_MOVED}
