"""SalUn's knobs (`finetune.method: {name: salun, ...}`)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from trust.methods.config import FORGET_TARGET_MOVED, ForgetTargetKnobs, MethodConfig


class SalunConfig(MethodConfig, ForgetTargetKnobs):
    """Static saliency mask over the UNet + retain loss on preservation images."""

    name: Literal["salun"] = "salun"
    fraction: float = Field(0.5, gt=0, le=1, description="share of UNet weights kept in the static mask (global top "
                                                         "|grad| of the forget loss accumulated over the forget prompts)")
    retain_weight: float = Field(1.0, ge=0, description="alpha, weight of the retain loss (diffusion loss on "
                                                        "preservation-prompt images made by the frozen model); 0 = off")

    adversarial: ClassVar[bool] = True
    replay: ClassVar[bool] = True
    implementation: ClassVar[str] = "trust.methods.salun.method:SalunMethod"
    moved_from: ClassVar[dict[str, str]] = {"salun_fraction": "fraction", "retain_weight": "retain_weight",
                                            **FORGET_TARGET_MOVED}
