"""The benchmarks' one fixed-sample recipe: which held-out prompts and seeds each measurement uses.

- `check`: the bar check during training (`check_images` images of held-out target prompts);
- `eval`: the final erasure sample (`eval_images`);
- `keep`: per kept concept (concept.keep), `keep_images` images of held-out preservation prompts
  that show it;
- `check_keep`: per kept concept, `check_images` such images on other seeds (the joint bar's check).
Prompts cycle over the held-out list; seeds are fixed offsets of the benchmark seed, so every
method and every benchmark is measured on the same images.
"""

from __future__ import annotations


def cycle(items: list[str], n: int) -> list[str]:
    return [items[i % len(items)] for i in range(n)]


class FixedSamples:
    def __init__(self, concept, sets: dict, s):
        held = [r["prompt"] for r in sets["target"]["eval"]]
        self.check = (cycle(held, s.check_images), [s.seed * 7919 + 11 + i for i in range(s.check_images)])
        self.eval = (cycle(held, s.eval_images), [s.seed * 7919 + 100_000 + i for i in range(s.eval_images)])
        self.keep: list[tuple[dict[str, str], list[str], list[int]]] = []
        self.check_keep: list[tuple[dict[str, str], list[str], list[int]]] = []
        for want in concept.keep:
            shows = [r["prompt"] for r in sets["preserve"]["eval"]
                     if all(r["labels"].get(h) == v for h, v in want.items())]
            if shows:
                self.keep.append((want, cycle(shows, s.keep_images),
                                  [s.seed * 7919 + 200_000 + i for i in range(s.keep_images)]))
                # the joint bar's check of the kept concept during training: its own seeds
                self.check_keep.append((want, cycle(shows, s.check_images),
                                        [s.seed * 7919 + 300_000 + i for i in range(s.check_images)]))
