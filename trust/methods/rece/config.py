"""RECE's knobs (`finetune.method: {name: rece, ...}`): UCE's edit, then adversarial rounds."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from trust.methods.config import MethodConfig
from trust.methods.uce.config import EditKnobs


class ReceConfig(MethodConfig, EditKnobs):
    """Reliable and Efficient Concept Erasure (Gong et al. 2024): UCE, then `rounds` rounds of deriving
    the embeddings that bring the concept back through the edited projections and erasing them too
    (ends after its first step)."""

    name: Literal["rece"] = "rece"
    rounds: int = Field(3, ge=1, description="adversarial rounds after the UCE edit (each derives one embedding per "
                                             "erased row and re-solves the edit with them)")
    adv_ridge: float = Field(0.1, gt=0, description="ridge of the adversarial embedding, c' = argmin sum_l "
                                                    "||W_l c' - W_old,l c||^2 + adv_ridge * s ||c'||^2 (s: mean "
                                                    "diagonal of sum_l W_l^T W_l, so it is scale-free)")

    implementation: ClassVar[str] = "trust.methods.rece.method:ReceMethod"
