"""An offline CLIP tokenizer for the world: byte-pair merges learned from the word list.

A real `CLIPTokenizer` (vocab + merges, the same files SD ships) whose merges are learned
here by plain BPE training on the world's words until every word is one token. Learned
merges, rather than hand-written chains, guarantee greedy encoding reproduces the
segmentation for every word. Characters stay in the vocabulary, so an unseen word still
tokenizes (into pieces) instead of becoming <|endoftext|>.
"""

from __future__ import annotations

import string
from collections import Counter

from transformers import CLIPTokenizer

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
EOW = "</w>"
MODEL_MAX_LENGTH = 32  # room for prompts plus adversarial prefix tokens later
PUNCTUATION = ",.!?'-"


def learn_merges(words: list[str]) -> list[tuple[str, str]]:
    """BPE training on `words` (each counted once) until every word is a single symbol.

    Ties between equally frequent pairs are broken lexicographically: deterministic.
    """
    segs = [tuple(w[:-1]) + (w[-1] + EOW,) for w in sorted(set(words))]
    merges: list[tuple[str, str]] = []
    while True:
        counts: Counter[tuple[str, str]] = Counter()
        for seg in segs:
            counts.update(zip(seg, seg[1:]))
        if not counts:
            return merges
        best = min(counts, key=lambda p: (-counts[p], p))
        merges.append(best)
        merged = best[0] + best[1]
        new_segs = []
        for seg in segs:
            out, i = [], 0
            while i < len(seg):
                if i + 1 < len(seg) and (seg[i], seg[i + 1]) == best:
                    out.append(merged)
                    i += 2
                else:
                    out.append(seg[i])
                    i += 1
            new_segs.append(tuple(out))
        segs = new_segs


def build_vocab(words: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    merges = learn_merges(words)
    tokens: list[str] = []
    for ch in string.ascii_lowercase + string.digits + PUNCTUATION:
        tokens += [ch, ch + EOW]
    tokens += [a + b for a, b in merges]
    tokens += [BOS, EOS]
    vocab: dict[str, int] = {}
    for t in tokens:
        vocab.setdefault(t, len(vocab))
    return vocab, merges


def build_tokenizer(words: list[str], model_max_length: int = MODEL_MAX_LENGTH) -> CLIPTokenizer:
    vocab, merges = build_vocab(words)
    return CLIPTokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=EOS,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=EOS,
        model_max_length=model_max_length,
    )
