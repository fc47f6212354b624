"""Full fine-tuning: the forget loss L_prev on every UNet weight (no mask): the upper bound
on what a selective method can change, and its cost."""

from __future__ import annotations

from trust.methods.base import Method
from trust.methods.losses import forget_loss


class FullMethod(Method):
    name = "full"

    def select_parameters(self):
        return dict(self.parts.unet.named_parameters())

    def step(self, step: int) -> dict:
        info = {}
        x_t, t, c_in, c_target, c_anchor = self.forget_batch(step, info)
        target = self.forget_target(x_t, t, c_target, c_anchor)
        l_prev = forget_loss(self.parts.unet(x_t, t, encoder_hidden_states=c_in).sample, target)
        loss = self.with_preservation(l_prev, step, info)
        self.update(loss)
        info.update({"loss": loss.item(), "l_prev": l_prev.item()})
        return info
