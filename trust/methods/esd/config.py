"""ESD's knobs (`finetune.method: {name: esd, ...}`)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from trust.methods.config import MethodConfig


class EsdConfig(MethodConfig):
    """Erased Stable Diffusion: negative guidance on cross-attention (x) or the rest of the UNet (u)."""

    name: Literal["esd"] = "esd"
    variant: Literal["x", "u"] = Field("x", description="`x` trains every attn2 (cross-attention) parameter, `u` "
                                                        "every UNet parameter except attn2")
    eta: float = Field(1.0, ge=0, description="negative-guidance strength")
    xt: Literal["ddim", "reference"] = Field(
        "ddim", description="x_t from the frozen model sampling the target prompt to a random DDIM step (`ddim`, as "
                            "ESD) or a noised reference image (`reference`, as SalUn)")
    ddim_steps: int = Field(20, ge=2, description="DDIM schedule length for xt: ddim")
    guidance: float = Field(3.0, ge=1.0, description="guidance of the frozen model's x_t sample")

    adversarial: ClassVar[bool] = True
    replay: ClassVar[bool] = True
    implementation: ClassVar[str] = "trust.methods.esd.method:EsdMethod"
    moved_from: ClassVar[dict[str, str]] = {"esd_variant": "variant", "eta": "eta", "esd_xt": "xt",
                                            "esd_ddim_steps": "ddim_steps", "esd_guidance": "guidance"}
