"""ANT+fusion as one `Method`: a single concept's LoRA trained with the ANT loss, fused into the
UNet's attn2 to_k/to_v weights in closed form (Eq. 7, lora.py) by `finish()`."""

from __future__ import annotations

from trust.methods.ant_fusion.lora import ConceptLora, fuse_deltas, kv_weight_names, write_weights
from trust.methods.base import Method


class AntFusionMethod(Method):
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
        self.trainer = ConceptLora(self.frozen, self.parts.scheduler, self.parts.encode_text, self.data, self.ft,
                                   0, self.keep)
        return dict(self.trainer.lora)

    def step(self, step: int) -> dict:
        terms = self.trainer.terms(step)
        self.update(terms["loss"])
        return {k: float(v.detach()) for k, v in terms.items()}

    def materialise(self) -> None:
        """Fuse the LoRA in closed form and write W* into parts.unet."""
        fused = fuse_deltas(self.parts, self.base_kv, [self.trainer.delta()], [self.data], list(self.keep.prompts),
                            self.ft)
        write_weights(self.parts.unet, fused)
