"""ANT+fusion's knobs (`finetune.method: {name: ant_fusion, ...}`): one LoRA on attn2 to_k/to_v
trained with the ANT loss, fused into the weights in closed form (Eq. 7) after the last step."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from trust.methods.ant.config import ANT_LOSS_MOVED, AntLossKnobs
from trust.methods.config import MethodConfig


class AntFusionConfig(MethodConfig, AntLossKnobs):
    name: Literal["ant_fusion"] = "ant_fusion"
    lora_rank: int = Field(4, ge=1, description="rank of the concept's LoRA on attn2 to_k/to_v")
    lora_alpha: float = Field(4.0, gt=0, description="LoRA alpha (scaling alpha/rank)")
    fusion_beta: float = Field(1.0, ge=0, description="beta, weight of the preservation embeddings in the "
                                                      "closed-form fusion (Eq. 7)")
    fusion_ridge: float = Field(1e-6, ge=0, description="tiny ridge lam*||W* - W||^2 added to Eq. 7 for a well-posed "
                                                        "solve; lam = fusion_ridge * mean diagonal of the normal matrix")
    fusion_positions: Literal["tokens", "all"] = Field(
        "tokens", description="text-encoder positions whose states are the e_j / e_k of Eq. 7: `tokens` the prompt's "
                              "real tokens (BOS..EOS), `all` every position the UNet's cross-attention reads, "
                              "padding included (it carries the prompt too)")
    fusion_overlap: Literal["own", "sum"] = Field(
        "own", description="multi-concept fusion (bench/ant_multi.py) only: the Eq. 7 target for a concept prompt "
                           "that shows other erased concepts too ('a yellow circle' when erasing circle and yellow): "
                           "`own` W + Delta W_i of its own concept only (the paper's form), `sum` W + the sum of "
                           "Delta W of every erased concept it shows. The pipeline erases one concept: `own`")

    implementation: ClassVar[str] = "trust.methods.ant_fusion.method:AntFusionMethod"
    moved_from: ClassVar[dict[str, str]] = {**ANT_LOSS_MOVED, "ant_lora_rank": "lora_rank",
                                            "ant_lora_alpha": "lora_alpha", "ant_fusion_beta": "fusion_beta",
                                            "ant_fusion_ridge": "fusion_ridge",
                                            "ant_fusion_positions": "fusion_positions",
                                            "ant_fusion_overlap": "fusion_overlap"}
