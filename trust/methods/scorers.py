"""TRUST concept scorers (`localize.scorer`): the concept score whose |gradient| with
respect to the cross-attention projections is the saliency.

- `denoise`: the forget loss L_prev on noised reference images (no sampling; cheapest).
- `classifier`: the world classifier's probability of `concept.detect` on images made by a
  short differentiable DDIM sample from the *current* weights for target prompts.
- `clip`: the CLIP score (cosine similarity of image and prompt embeddings) of such images,
  decoded by the VAE, with their prompts: the paper's scorer. Needs local CLIP weights (model.clip_dir).

The sampling scorers backpropagate through `localize.sample_steps` UNet calls (x2 with
guidance) of `localize.sample_batch` images: few steps, small batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from trust.config import LocalizeParams
from trust.methods.data import ForgetData
from trust.methods.losses import forget_loss
from trust.methods.saliency import neuron_scores, zscore_mask
from trust.models.clip import CLIP_HELP, CLIP_KEY, Clip
from trust.models.parts import DiffusionParts
from trust.sampling import generate
from trust.utils.registry import Registry
from trust.utils.seeding import torch_generator


def _grads(score: torch.Tensor, params: dict[str, torch.nn.Parameter]) -> dict[str, torch.Tensor]:
    return dict(zip(params, torch.autograd.grad(score, list(params.values()))))


class _Flags:
    """requires_grad on `params` for the duration, restored after (saliency at localize time)."""

    def __init__(self, params):
        self.params = params

    def __enter__(self):
        self.flags = {k: p.requires_grad for k, p in self.params.items()}
        for p in self.params.values():
            p.requires_grad_(True)

    def __exit__(self, *exc):
        for k, p in self.params.items():
            p.requires_grad_(self.flags[k])


class Scorer:
    name = "base"

    def __init__(self, parts: DiffusionParts, data: ForgetData, loc: LocalizeParams):
        self.parts, self.data, self.loc = parts, data, loc

    def gradients(self, unet, frozen, params: dict[str, torch.nn.Parameter], *key: int) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def mask(self, unet, frozen, params, *key: int) -> dict[str, torch.Tensor]:
        """0/1 concept-neuron mask: z-scored mean |grad| per neuron above localize.xi. Several concepts
        (data with strata): each concept's neurons localised on its own prompts, and the union of their
        masks (one saliency over all of them let the concepts with the strongest gradients take the
        mask: 520 joint steps left 5 of 8 pairs at 0.38-0.97, bench/results/multi_concept.md)."""
        if self.data.strata is None:
            scores = neuron_scores(self.gradients(unet, frozen, params, *key), self.loc.granularity)
            return zscore_mask(scores, self.loc.xi, self.loc.normalise)
        whole, union = self.data, None
        try:
            for part in whole.per_concept():
                self.data = part
                m = self.mask(unet, frozen, params, *key)
                union = m if union is None else {k: torch.maximum(union[k], m[k]) for k in m}
        finally:
            self.data = whole
        return union


class DenoiseScorer(Scorer):
    name = "denoise"

    def gradients(self, unet, frozen, params, *key):
        x_t, t, c_target, c_anchor, _ = self.data.batch(self.parts, self.loc.batch_size, *key)
        with torch.no_grad():
            target_eps = frozen(x_t, t, encoder_hidden_states=c_anchor).sample
        with _Flags(params):
            loss = forget_loss(unet(x_t, t, encoder_hidden_states=c_target).sample, target_eps)
            return _grads(loss, params)


class _SamplingScorer(Scorer):
    """Score of images sampled (differentiably) from the current UNet for target prompts."""

    def sample(self, *key: int) -> tuple[torch.Tensor, list[str]]:
        g = torch_generator(*key)
        idx = torch.randint(0, len(self.data.prompts), (self.loc.sample_batch,), generator=g).tolist()
        seeds = torch.randint(0, 2**31 - 1, (self.loc.sample_batch,), generator=g).tolist()
        prompts = [self.data.prompts[i] for i in idx]
        images = generate(self.parts, prompts, seeds, steps=self.loc.sample_steps,
                          guidance=self.loc.sample_guidance, grad=True)
        return images, prompts

    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        raise NotImplementedError

    def gradients(self, unet, frozen, params, *key):
        if unet is not self.parts.unet:
            raise ValueError(f"scorer {self.name} samples from parts.unet; pass it as `unet`")
        with _Flags(params):
            images, prompts = self.sample(*key)
            return _grads(self.score(images, prompts), params)


class ClassifierScorer(_SamplingScorer):
    name = "classifier"

    def __init__(self, parts, data, loc, classifier, detect: dict[str, str]):
        super().__init__(parts, data, loc)
        if classifier is None:
            raise ValueError("localize.scorer=classifier needs the world's concept classifier "
                             "(world.classifier_dir, built by `trust world train-classifier`); "
                             "for another model use scorer denoise or clip")
        self.classifier = classifier.requires_grad_(False).eval()
        self.detect = dict(detect)

    def score(self, images, prompts):
        return self.classifier.concept_probability(images, **self.detect).mean()


CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _features(out) -> torch.Tensor:
    # transformers 5 may return a model output instead of a tensor
    if isinstance(out, torch.Tensor):
        return out
    return out.pooler_output if getattr(out, "pooler_output", None) is not None else out[0]


def clip_score(model, tokenizer, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """Mean cosine similarity of CLIP image and text embeddings; images in [-1, 1], differentiable."""
    size = model.config.vision_config.image_size
    x = (images + 1) / 2
    x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False)
    mean = torch.tensor(CLIP_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=x.device).view(1, 3, 1, 1)
    img = _features(model.get_image_features(pixel_values=((x - mean) / std).to(model.dtype)))
    tok = tokenizer(prompts, padding="max_length", truncation=True, return_tensors="pt",
                    max_length=min(tokenizer.model_max_length, model.config.text_config.max_position_embeddings))
    txt = _features(model.get_text_features(input_ids=tok.input_ids.to(x.device),
                                            attention_mask=tok.attention_mask.to(x.device)))
    return F.cosine_similarity(img, txt, dim=-1).mean()


class ClipScorer(_SamplingScorer):
    name = "clip"

    def __init__(self, parts, data, loc, clip: Clip | None = None):
        super().__init__(parts, data, loc)
        if clip is None:
            raise ValueError(f"localize.scorer=clip needs {CLIP_KEY}: {CLIP_HELP}; set {CLIP_KEY} in params.yaml, "
                             "or use localize.scorer denoise or classifier")
        self.model, self.tokenizer = clip.model.to(parts.unet.device), clip.tokenizer

    def score(self, images, prompts):
        return clip_score(self.model, self.tokenizer, images, prompts)


# localize.scorer -> a builder taking what any scorer may need; each passes on only its own.
SCORERS: Registry = Registry("scorer", "localize.scorer")
SCORERS.add("denoise", lambda loc, parts, data, classifier, detect, clip: DenoiseScorer(parts, data, loc))
SCORERS.add("classifier", lambda loc, parts, data, classifier, detect, clip:
            ClassifierScorer(parts, data, loc, classifier, detect or {}))
SCORERS.add("clip", lambda loc, parts, data, classifier, detect, clip: ClipScorer(parts, data, loc, clip))


def build_scorer(loc: LocalizeParams, parts: DiffusionParts, data: ForgetData, classifier=None,
                 detect: dict[str, str] | None = None, clip: Clip | None = None) -> Scorer:
    """The configured scorer. `classifier`/`detect`: the world classifier and the labels that mean
    'concept present' (scorer classifier); `clip`: CLIP loaded from model.clip_dir by
    `trust.models.clip.load_clip` (scorer clip)."""
    return SCORERS.get(loc.scorer)(loc, parts, data, classifier, detect, clip)
