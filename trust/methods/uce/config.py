"""UCE's knobs (`finetune.method: {name: uce, ...}`); RECE's extend them (trust/methods/rece/config.py)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, Field

from trust.methods.config import MethodConfig


class EditKnobs(BaseModel):
    """The closed-form edit of the cross-attention projections (UCE's normal equations)."""

    erase_scale: float = Field(1.0, gt=0, description="weight of the erased rows (target-prompt states mapped onto "
                                                      "their anchor's projections)")
    preserve_scale: float = Field(1.0, ge=0, description="weight of the preserved rows (preservation-prompt states "
                                                         "that keep their original projections); 0: none")
    lamb: float = Field(0.5, gt=0, description="ridge toward the original weights, lamb ||W - W_old||^2 (keeps the "
                                               "solve well posed and the edit small where no row speaks)")
    projections: Literal["kv", "v"] = Field("kv", description="edited attn2 projections: key and value (`kv`, UCE's "
                                                              "erasure) or value only (`v`)")
    positions: Literal["concept", "all"] = Field(
        "concept", description="text-encoder positions of a target prompt that are erased: `concept` from the first "
                               "position where it differs from its anchor to the end (the causal text encoder carries "
                               "the concept into every later position, padding included), `all` every position "
                               "after BOS")


class UceConfig(MethodConfig, EditKnobs):
    """Unified Concept Editing (Gandikota et al. 2024): one closed-form edit of every attn2 to_k/to_v
    (ends after its first step)."""

    name: Literal["uce"] = "uce"

    implementation: ClassVar[str] = "trust.methods.uce.method:UceMethod"
