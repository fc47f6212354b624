"""ANT+fusion as `Method`s: `ConceptLoraMethod` trains one concept's LoRA with the ANT loss (the
multi-concept strategies use its delta); `AntFusionMethod` also fuses it into the UNet's attn2
to_k/to_v weights in closed form (Eq. 7, lora.py) when it materialises. Both train through the one
training loop (trust/methods/loop.py)."""

from __future__ import annotations

import torch

from trust.config import FinetuneParams, LocalizeParams
from trust.methods.ant_fusion.lora import ConceptLora, fuse_deltas, kv_weight_names, write_weights
from trust.methods.base import Method
from trust.methods.data import ForgetData
from trust.methods.loop import train
from trust.models.parts import DiffusionParts


class ConceptLoraMethod(Method):
    """One concept's LoRA (ConceptLora) on a frozen copy of `parts.unet`, trained step by step;
    `parts.unet` itself is never written. `concept_index` keys the LoRA's random streams (one per
    concept in multi-concept erasure)."""

    name = "concept_lora"

    def __init__(self, *args, concept_index: int = 0, **kwargs):
        self.concept_index = concept_index  # read by select_parameters, inside Method.__init__
        super().__init__(*args, **kwargs)

    @classmethod
    def needs_keep(cls, ft) -> bool:
        return False  # the LoRA's own preservation term uses `keep` when it is given

    def select_parameters(self):
        self.trainer = ConceptLora(self.frozen, self.parts.scheduler, self.parts.encode_text, self.data, self.ft,
                                   self.concept_index, self.keep)
        return dict(self.trainer.lora)

    def set_keep_weight(self, w: float) -> None:
        super().set_keep_weight(w)
        self.trainer.params = self.ft  # the LoRA's preservation term reads its weight there

    def step(self, step: int) -> dict:
        terms = self.trainer.terms(step)
        self.update(terms["loss"])
        return {k: float(v.detach()) for k, v in terms.items()}

    def delta(self) -> dict[str, torch.Tensor]:
        return self.trainer.delta()


def train_concept_lora(parts: DiffusionParts, data: ForgetData, params: FinetuneParams, concept_index: int = 0,
                       keep: ForgetData | None = None, progress: bool = False) -> dict[str, torch.Tensor]:
    """Train one concept's LoRA with the ANT loss against `parts.unet` (left unchanged); Delta W per
    attn2 to_k/to_v weight."""
    method = ConceptLoraMethod(parts, data, params, LocalizeParams(), keep=keep, concept_index=concept_index)
    train(method, params.steps, progress=progress, desc=f"concept LoRA {concept_index}")
    return method.delta()


def ant_multi_concept(parts: DiffusionParts, concepts: list[ForgetData], preserve_prompts: list[str],
                      params: FinetuneParams, keep: ForgetData | None = None,
                      progress: bool = False) -> dict[str, torch.Tensor]:
    """Train one LoRA per concept (each from the original weights), fuse them in closed form and
    write W* into `parts.unet`. `keep`: data of the optional preservation term (preserve_weight).

    Returns the fused weights (name -> W*)."""
    names = kv_weight_names(parts.unet)
    base = {k: parts.unet.get_parameter(k).detach().clone() for k in names}
    deltas = [train_concept_lora(parts, data, params, i, keep=keep, progress=progress)
              for i, data in enumerate(concepts)]
    fused = fuse_deltas(parts, base, deltas, concepts, preserve_prompts, params)
    write_weights(parts.unet, fused)
    return fused


class AntFusionMethod(ConceptLoraMethod):
    """ANT+fusion as one `Method` (`finetune.method: ant_fusion`; benchmark row ANT+fusion): a single
    concept's LoRA trained with the ANT loss (ConceptLora) and, on `materialise()` (the training loop's
    `finish()` after the last step, and any mid-training check), fused into the UNet with Eq. 7 (one concept: W* maps the
    concept's token embeddings like W + Delta W and the preservation prompts' like W). Training
    never touches `parts.unet`; only `materialise()` writes the fused to_k/to_v weights into it.
    The preservation prompts are `keep`'s (the preservation train prompts), hence needs_keep."""

    name = "ant_fusion"

    @classmethod
    def needs_keep(cls, ft) -> bool:
        return True

    def keep_reason(self) -> str:
        return "ant_fusion's closed-form fusion (preservation embeddings)"

    def select_parameters(self):
        self.base_kv = {k: self.parts.unet.get_parameter(k).detach().clone() for k in kv_weight_names(self.parts.unet)}
        return super().select_parameters()

    def materialise(self) -> None:
        """Fuse the LoRA in closed form and write W* into parts.unet."""
        fused = fuse_deltas(self.parts, self.base_kv, [self.delta()], [self.data], list(self.keep.prompts),
                            self.ft)
        write_weights(self.parts.unet, fused)
