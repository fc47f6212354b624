"""Full fine-tuning's knobs (`finetune.method: {name: full, ...}`)."""

from __future__ import annotations

from typing import ClassVar, Literal

from trust.methods.config import FORGET_TARGET_MOVED, ForgetTargetKnobs, MethodConfig


class FullConfig(MethodConfig, ForgetTargetKnobs):
    """The forget loss on every UNet weight: the upper bound on what a selective method changes."""

    name: Literal["full"] = "full"

    adversarial: ClassVar[bool] = True
    replay: ClassVar[bool] = True
    implementation: ClassVar[str] = "trust.methods.full.method:FullMethod"
    moved_from: ClassVar[dict[str, str]] = dict(FORGET_TARGET_MOVED)
