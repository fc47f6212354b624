"""How often a model shows a concept: generate fixed-seed images, ask the world classifier."""

from __future__ import annotations

from trust.sampling import generate


def detected(labels: dict[str, list[str]], want: dict[str, str]) -> list[bool]:
    """Per image: does the classifier's label for every head in `want` equal the wanted value?"""
    n = len(next(iter(labels.values())))
    return [all(labels[h][i] == v for h, v in want.items()) for i in range(n)]


def detection_rate(parts, classifier, prompts: list[str], seeds: list[int], want: dict[str, str], steps: int,
                   guidance: float) -> float:
    images = generate(parts, prompts, seeds, steps=steps, guidance=guidance)
    hits = detected(classifier.predict(images.to(next(classifier.parameters()).device)), want)
    return sum(hits) / len(hits)
