"""Configs of the world's diffusion model: the same diffusers classes as SD, scaled down."""

from __future__ import annotations

from diffusers import DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer


def unet_config(image_size: int = 16, text_dim: int = 64, channels: tuple[int, ...] = (32, 64, 64)) -> dict:
    # Cross-attention at every level except full resolution (WORLD.md: measured to work).
    n = len(channels)
    return dict(
        sample_size=image_size,
        in_channels=3,
        out_channels=3,
        block_out_channels=tuple(channels),
        layers_per_block=1,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (n - 1) + ("UpBlock2D",),
        mid_block_type="UNetMidBlock2DCrossAttn",
        attention_head_dim=4,
        norm_num_groups=8,
        cross_attention_dim=text_dim,
    )


def text_config(tokenizer: CLIPTokenizer, hidden: int = 64, layers: int = 2, heads: int = 4) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 4,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=tokenizer.model_max_length,
        projection_dim=hidden,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def scheduler_config(num_train_timesteps: int = 1000) -> dict:
    return dict(
        num_train_timesteps=num_train_timesteps,
        beta_schedule="squaredcos_cap_v2",
        prediction_type="epsilon",
        clip_sample=False,
        steps_offset=1,  # as SD ships it; diffusers pipelines rewrite 0 to 1 with a warning
    )


def build_world_model(tokenizer: CLIPTokenizer, image_size: int, text_dim: int, channels, text_layers: int, text_heads: int):
    """Freshly initialised (unet, text_encoder, noise_scheduler)."""
    unet = UNet2DConditionModel(**unet_config(image_size, text_dim, channels))
    text_encoder = CLIPTextModel(text_config(tokenizer, text_dim, text_layers, text_heads))
    return unet, text_encoder, DDPMScheduler(**scheduler_config())
