"""The world's concept classifier: its stand-in for NudeNet / CLIP.

Three heads (shape, colour, background), each with a "none" class so an image that shows
nothing is not scored as some concept. Differentiable end to end: it takes images in the
diffusion model's [-1, 1] range and returns probabilities, so it can drive saliency.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from trust.utils.safetensors_io import load_tensors, save_tensors, write_json
from trust.utils.seeding import numpy_rng, torch_generator
from trust.world.scenes import Scene, random_scene, render, to_model_range
from trust.world.vocabulary import BACKGROUNDS, COLOURS, NONE, SHAPES
from trust.world.config import ClassifierTrainConfig  # noqa: F401 (its home; re-exported)

HEADS: dict[str, tuple[str, ...]] = {
    "shape": SHAPES + (NONE,),
    "colour": COLOURS + (NONE,),
    "background": BACKGROUNDS + (NONE,),
}
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


class ConceptClassifier(nn.Module):
    def __init__(self, width: int = 32, image_size: int = 16):
        super().__init__()
        self.width, self.image_size = width, image_size
        w = width

        def block(cin, cout, stride):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.GroupNorm(8, cout), nn.SiLU())

        self.features = nn.Sequential(block(3, w, 1), block(w, w, 1), block(w, 2 * w, 2), block(2 * w, 2 * w, 2))
        self.heads = nn.ModuleDict({h: nn.Linear(2 * w, len(labels)) for h, labels in HEADS.items()})

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled feature vector: the space the world's Frechet distance is measured in."""
        return self.features(images).mean(dim=(2, 3))

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.embed(images)
        return {h: head(f) for h, head in self.heads.items()}

    def probabilities(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {h: logits.softmax(-1) for h, logits in self(images).items()}

    def concept_probability(self, images: torch.Tensor, **concept: str) -> torch.Tensor:
        """P(image shows all given labels), e.g. shape="circle", colour="red"; differentiable."""
        probs = self.probabilities(images)
        out = torch.ones(images.shape[0], dtype=images.dtype, device=images.device)
        for head, label in concept.items():
            if head not in HEADS or label not in HEADS[head]:
                raise ValueError(f"unknown concept {head}={label!r}; heads and labels: {HEADS}")
            out = out * probs[head][:, HEADS[head].index(label)]
        return out

    @torch.no_grad()
    def predict(self, images: torch.Tensor, batch_size: int = 256) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {h: [] for h in HEADS}
        for i in range(0, images.shape[0], batch_size):
            for h, logits in self(images[i : i + batch_size]).items():
                out[h] += [HEADS[h][j] for j in logits.argmax(-1).tolist()]
        return out

    def save(self, folder: Path) -> None:
        folder = Path(folder)
        save_tensors(self.state_dict(), folder / WEIGHTS_FILE)
        write_json({"width": self.width, "image_size": self.image_size, "heads": HEADS}, folder / CONFIG_FILE)

    @classmethod
    def load(cls, folder: Path) -> "ConceptClassifier":
        folder = Path(folder)
        if not (folder / CONFIG_FILE).is_file() or not (folder / WEIGHTS_FILE).is_file():
            raise FileNotFoundError(
                f"no concept classifier in {folder}: expected {CONFIG_FILE} and {WEIGHTS_FILE}; "
                "build it with `trust world train-classifier`"
            )
        cfg = json.loads((folder / CONFIG_FILE).read_text())
        if {h: tuple(v) for h, v in cfg["heads"].items()} != HEADS:
            raise ValueError(f"classifier in {folder} has heads {cfg['heads']}, this code expects {HEADS}")
        model = cls(cfg["width"], cfg["image_size"])
        model.load_state_dict(load_tensors(folder / WEIGHTS_FILE))
        return model.eval()


def labels_of(scene: Scene) -> dict[str, str]:
    return {"shape": scene.shape or NONE, "colour": scene.colour or NONE, "background": scene.background}


def _noise_image(rng: np.random.Generator, size: int) -> np.ndarray:
    """White or smooth (upsampled) noise, grey or coloured: shows no concept at all."""
    cells = int(rng.choice([size, size // 2, size // 4]))
    channels = 3 if rng.random() < 0.5 else 1
    base = rng.uniform(0, 1, (cells, cells, channels)).astype(np.float32)
    base = np.repeat(np.repeat(base, size // cells, 0), size // cells, 1)
    return np.broadcast_to(base, (size, size, 3)).copy()


def labelled_batch(seed: int, index: int, cfg: ClassifierTrainConfig) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    rng = numpy_rng(seed, index)
    images, labels = [], {h: [] for h in HEADS}
    for _ in range(cfg.batch_size):
        r = rng.random()
        if r < cfg.p_noise:
            img, lab = _noise_image(rng, cfg.image_size), {h: NONE for h in HEADS}
        else:
            scene = random_scene(rng, empty=r < cfg.p_noise + cfg.p_empty)
            img, lab = render(scene, cfg.image_size), labels_of(scene)
        # Mild pixel noise: generated images are never as clean as rendered ones.
        img = img + rng.normal(0, rng.uniform(0, 0.06), img.shape).astype(np.float32)
        images.append(img)
        for h in HEADS:
            labels[h].append(HEADS[h].index(lab[h]))
    x = torch.from_numpy(to_model_range(np.stack(images)))
    return x, {h: torch.tensor(v) for h, v in labels.items()}


def train_classifier(cfg: ClassifierTrainConfig, progress: bool = True) -> tuple[ConceptClassifier, list[float]]:
    torch.manual_seed(int(torch_generator(cfg.seed, 0).initial_seed() % 2**31))
    model = ConceptClassifier(cfg.width, cfg.image_size)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps, pct_start=0.1)
    losses = []
    bar = tqdm(range(cfg.steps), desc="classifier", disable=not progress)
    for step in bar:
        x, y = labelled_batch(cfg.seed, step, cfg)
        logits = model(x)
        loss = sum(F.cross_entropy(logits[h], y[h]) for h in HEADS)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{loss.item():.3f}")
    return model.eval(), losses


@torch.no_grad()
def heldout_accuracy(model: ConceptClassifier, seed: int, n_batches: int = 4, image_size: int = 16) -> dict[str, float]:
    """Per-head accuracy on procedural images from a seed never used in training."""
    cfg = ClassifierTrainConfig(seed=seed, image_size=image_size, batch_size=128)
    correct = {h: 0 for h in HEADS}
    total = 0
    for i in range(n_batches):
        x, y = labelled_batch(seed, i, cfg)
        logits = model(x)
        for h in HEADS:
            correct[h] += int((logits[h].argmax(-1) == y[h]).sum())
        total += x.shape[0]
    return {h: correct[h] / total for h in HEADS}
