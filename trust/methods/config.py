"""What every method's configuration shares (torch-free: `import trust.config` stays quick).

Each method's knobs live next to its code, in `trust/methods/<name>/config.py`: a pydantic model
with `name: Literal["<name>"]` (the discriminator of `finetune.method`) and only that method's
fields, as peft's `LoraConfig` sits beside its layers. `moved_from` maps the old flat
`finetune.*` key (before per-method configs) to the field that replaced it, so an old params
file gets one error naming the new place. `implementation` is the `Method` subclass, imported
only when a method is built.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field


class MethodConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    implementation: ClassVar[str] = ""  # "trust.methods.<name>.method:<Class>"
    moved_from: ClassVar[dict[str, str]] = {}  # old flat finetune key -> field of this config
    # The pipeline hands the localize stage's mask to a method that starts from it (TRUST).
    starts_from_localize: ClassVar[bool] = False
    # It trains on the shared forget batch (Method.forget_batch), which adversarial erasure joins.
    adversarial: ClassVar[bool] = False
    # Its step adds the shared terms (Method.with_preservation), which concept-free replay (finetune.prior) joins.
    replay: ClassVar[bool] = False

    @classmethod
    def method_name(cls) -> str:
        return cls.model_fields["name"].default


# L_prev's training targets (Method.forget_target; docs/methods.md)
ForgetTarget = Literal["anchor", "negative_guidance", "anchor_negative"]


class ForgetTargetKnobs(BaseModel):
    """The training target of L_prev (TRUST, SalUn, full fine-tuning)."""

    forget_target: ForgetTarget = Field(
        "anchor", description="L_prev maps the target onto eps*(anchor) (`anchor`), onto ESD's negative-guidance "
                              "target eps*(empty) - eta (eps*(c) - eps*(empty)) (`negative_guidance`), or onto the "
                              "anchor pushed away from the target, eps*(anchor) - eta (eps*(c) - eps*(anchor)) "
                              "(`anchor_negative`)")
    eta: float = Field(1.0, ge=0, description="strength of the push away from the concept (forget_target: "
                                              "negative_guidance, anchor_negative)")


FORGET_TARGET_MOVED = {"forget_target": "forget_target", "eta": "eta"}
