"""ANT's knobs (`finetune.method: {name: ant, ...}`). Defaults: the paper's nudity setting (SD v1.4:
50 DDIM steps, t'=43, lambda=(1.0, 0.5, 0.5)); t'/N is what carries over to another schedule
length. The learning rate and step count are finetune's shared `lr` / `steps` (paper: 5e-4 on SD)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, Field

from trust.methods.config import MethodConfig


class AntLossKnobs(BaseModel):
    """The trajectory-aware ANT loss (shared by `ant` and `ant_fusion`)."""

    split_step: int = Field(
        43, ge=1, description="t', the split step, as an index k of a ddim_steps-step DDIM schedule counted in "
                              "diffusion time (k=0 the least noisy DDIM timestep, k=N-1 the noisiest). It becomes "
                              "the training timestep t'_train = the k-th smallest DDIM timestep (leading spacing, "
                              "1000 train steps, N=50: k*20+1, so 43 -> 861). L_preserve and L_uncond-early use "
                              "t1 ~ U{t'_train..T_train-1} (early = high noise), L_erase and L_uncond-late "
                              "t2 ~ U{0..t'_train-1}")
    ddim_steps: int = Field(50, ge=2, description="N, the DDIM schedule length split_step indexes")
    l1: float = Field(1.0, ge=0, description="lambda1, weight of L_erase (paper nudity 1.0; celebrity/style 0.4)")
    l2: float = Field(0.5, ge=0, description="lambda2, weight of L_uncond-early (paper 0.5)")
    l3: float = Field(0.5, ge=0, description="lambda3, weight of L_uncond-late (paper nudity 0.5; celebrity/style 0.2)")
    eta: float = Field(1.0, ge=0, description="eta, guidance scale of delta(c) = eps*(x_t,t,c) - eps*(x_t,t,empty) "
                                              "in the preserve (+eta) and erase (-eta) targets")


ANT_LOSS_MOVED = {"ant_split_step": "split_step", "ant_ddim_steps": "ddim_steps", "ant_l1": "l1", "ant_l2": "l2",
                  "ant_l3": "l3", "ant_eta": "eta"}


class AntConfig(MethodConfig, AntLossKnobs):
    """ANT: preserve early, erase mid-to-late denoising steps, under an intersected saliency mask."""

    name: Literal["ant"] = "ant"
    scope: Literal["unet", "attn2", "non_attn2"] = Field(
        "unet", description="UNet weights the saliency mask is computed over (and training may touch)")
    gamma: float = Field(1e-5, ge=0, description="a weight is salient in one map when |grad L| >= gamma (absolute; "
                                                 "the scale depends on the model: check mask_history; on the world "
                                                 "1e-5 leaves ~2% of the UNet after 52 maps, 1e-4 only ~900 weights)")
    seeds: int = Field(4, ge=1, description="N_s, seeds per concept prompt in the saliency maps")
    max_maps: int = Field(100, ge=1, description="at most this many maps (prompts x seeds) are intersected (paper: "
                                                 "the active count levels off after ~100)")
    saliency_batch: int = Field(1, ge=1, description="reference images per saliency map (of that prompt)")

    implementation: ClassVar[str] = "trust.methods.ant.method:AntMethod"
    replay: ClassVar[bool] = True
    moved_from: ClassVar[dict[str, str]] = {**ANT_LOSS_MOVED, "ant_scope": "scope", "ant_gamma": "gamma",
                                            "ant_seeds": "seeds", "ant_max_maps": "max_maps",
                                            "ant_saliency_batch": "saliency_batch"}
