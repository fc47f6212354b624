"""Checks of a concept spec, before any work: each mistake is one message naming the field and the fix.

Run by the params schema (trust/config: every stage and `trust params check` refuse a bad spec
before a model is loaded) on the built-in world, where the concept's words and labels have a
meaning the code can check:
- `label_problems`: detect / keep heads and values exist (with a did-you-mean), `kind` fits the
  number of labels, no kept concept is the target;
- `template_problems` (on the resolved spec): templates use known slots; every target prompt
  shows every detect label; no preservation prompt can show the target (it names the target, or
  leaves open a head that would make it the target); every kept concept is shown by some
  preservation prompt; the anchor does not show the target; every word is one the world's
  tokenizer knows (an unknown word is split into pieces: "coloured" ends in the token "red").
Torch-free.
"""

from __future__ import annotations

import difflib
import functools
from pathlib import Path

from trust.concepts.neighbours import templates_showing
from trust.concepts.words import SLOT_VALUES, expand, labels_of, slots_of, unknown_words


def _did_you_mean(word: str, options) -> str:
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _labels_problems(field: str, labels: dict[str, str]) -> list[str]:
    out = []
    for head, value in labels.items():
        if head not in SLOT_VALUES:
            out.append(f"{field}: unknown head {head!r}; the world classifier's heads are "
                       f"{', '.join(SLOT_VALUES)}{_did_you_mean(head, SLOT_VALUES)}")
        elif value not in SLOT_VALUES[head]:
            out.append(f"{field}.{head}: unknown {head} {value!r}; the world's {head}s are "
                       f"{', '.join(SLOT_VALUES[head])}{_did_you_mean(value, SLOT_VALUES[head])}")
    return out


def _fmt(labels: dict[str, str]) -> str:
    return "{" + ", ".join(f"{h}: {v}" for h, v in labels.items()) + "}"


def label_problems(concept) -> list[str]:
    """Problems of `detect`, `keep`, `add_keep` and `kind` (world labels)."""
    out = _labels_problems("concept.detect", concept.detect)
    n = len(concept.detect)
    if concept.kind == "single" and n != 1:
        out.append(f"concept.kind: single, but concept.detect {_fmt(concept.detect)} has {n} labels; a single concept "
                   "is one label (e.g. {shape: circle}); for a pair of labels use kind: combination (both together) "
                   "or kind: conditional (a concept only in one context)")
    if concept.kind in ("combination", "conditional") and n < 2:
        out.append(f"concept.kind: {concept.kind} needs at least two labels in concept.detect (e.g. "
                   + ("{shape: circle, colour: red}" if concept.kind == "combination" else
                      "{shape: cross, background: striped}") + f"), got {_fmt(concept.detect)}; or use kind: single")
    if concept.kind == "conditional" and n >= 2 and "background" not in concept.detect:
        out.append(f"concept.kind: conditional means a concept only in some context; the world's context is the "
                   f"background: add a background label to concept.detect {_fmt(concept.detect)} "
                   "(e.g. background: striped) or use kind: combination")
    for name in ("keep", "add_keep"):
        for i, want in enumerate(getattr(concept, name) or []):
            field = f"concept.{name}[{i}]"
            out += _labels_problems(field, want)
            if not want:
                out.append(f"{field}: empty label set; name the kept concept's labels, e.g. {{shape: square}}")
            elif all(want.get(h) == v for h, v in concept.detect.items()):
                out.append(f"{field}: {_fmt(want)} shows every detect label {_fmt(concept.detect)}: it is the target "
                           "itself, which cannot be both erased and kept; remove it")
    return out


def _slot_problem(field: str, template: str) -> str | None:
    try:
        slots_of(template)
    except ValueError as e:
        return f"{field}: {e}"
    return None


def template_problems(concept, tokenizer_dir: Path | None = None, origins: dict | None = None) -> list[str]:
    """Problems of a resolved concept's templates (see the module doc). `origins`: the field each
    entry came from (neighbours.resolve_with_origins), so a message names what the user wrote."""
    origins = origins or {}

    def where(role: str, i: int) -> str:
        names = origins.get(role)
        return names[i] if names and i < len(names) else f"concept.{role}[{i}]"

    out, words = [], {}
    detect = concept.detect
    for i, t in enumerate(concept.target):
        field = where("target", i)
        if (p := _slot_problem(field, t)):
            out.append(p)
            continue
        for prompt, _ in expand(t):
            labels = labels_of(prompt)
            wrong = {h: v for h, v in detect.items() if labels.get(h) != v}
            if wrong:
                named = ", ".join(f"{h}: {v}" + (f" (it names {labels[h]})" if h in labels else "")
                                  for h, v in wrong.items())
                out.append(f"{field}: {t!r} gives {prompt!r}, which does not show {named} of concept.detect; every "
                           f"target prompt must name every detect label, e.g. {templates_showing(detect)[0]!r}")
                break
        words.update({w: field for p, _ in expand(t) for w in unknown_words(p)})
    shown = [False] * len(concept.keep)
    for i, t in enumerate(concept.preserve):
        field = where("preserve", i)
        if (p := _slot_problem(field, t)):
            out.append(p)
            continue
        for prompt, _ in expand(t):
            labels = labels_of(prompt)
            if all(labels.get(h) == v for h, v in detect.items()):
                out.append(f"{field}: {t!r} gives {prompt!r}, which is the target {_fmt(detect)}: a preservation "
                           "prompt would keep what is erased; write its slot values out without the target's, or "
                           "remove it")
                break
            contradicts = any(h in labels and labels[h] != v for h, v in detect.items())
            if not contradicts:
                open_ = [h for h in detect if h not in labels]
                out.append(f"{field}: {t!r} gives {prompt!r}, which leaves {', '.join(open_)} open, so it can show "
                           f"the target {_fmt(detect)}; name a {open_[0]} other than {detect[open_[0]]}")
                break
            for k, want in enumerate(concept.keep):
                shown[k] |= all(labels.get(h) == v for h, v in want.items())
        words.update({w: field for p, _ in expand(t) for w in unknown_words(p)})
    for k, want in enumerate(concept.keep):
        if not shown[k]:
            ex = templates_showing(want)
            out.append(f"{where('keep', k)}: {_fmt(want)}: no preservation prompt shows it, so it is neither kept by "
                       "training nor measured; add a template to concept.preserve"
                       + (f", e.g. {ex[0]!r}" if ex else "") + ", or remove the entry")
    if (p := _slot_problem("concept.anchor", concept.anchor)):
        out.append(p)
    else:
        for prompt, _ in expand(concept.anchor):
            if all(labels_of(prompt).get(h) == v for h, v in detect.items()):
                out.append(f"concept.anchor: {concept.anchor!r} gives {prompt!r}, which shows the target "
                           f"{_fmt(detect)}: target prompts would be mapped onto the concept itself; use a scene "
                           "without it, e.g. 'a {background} background'")
                break
        words.update({w: "concept.anchor" for p, _ in expand(concept.anchor) for w in unknown_words(p)})
    for w, field in words.items():
        out.append(f"{field}: {w!r} is not a word of the world's vocabulary; its tokenizer reads it as "
                   f"{pieces(w, tokenizer_dir)}, not as one word" + _did_you_mean(w, _known())
                   + "; use a word of trust/world/vocabulary.py")
    return out


def _known() -> list[str]:
    from trust.world.captions import all_words

    return all_words()


def pieces(word: str, tokenizer_dir: Path | None) -> str:
    """What a tokenizer folder makes of `word`: "'colou' + 'red'" (or a note when it is absent)."""
    toks = tokenize(word, tokenizer_dir)
    if toks is None:
        return "pieces (tokenizer folder not found)"
    return " + ".join(repr(t) for t in toks)


def tokenize(text: str, tokenizer_dir: Path | None) -> list[str] | None:
    """Tokens of `text` (no start/end/padding, no end-of-word marks) with the tokenizer saved in
    `tokenizer_dir` (tokenizer.json, or CLIP's vocab.json + merges.txt); None when there is none."""
    if tokenizer_dir is None or (tok := _tokenizer(str(tokenizer_dir))) is None:
        return None
    # transformers' CLIPTokenizer (SD) has .tokenize; a tokenizers.Tokenizer (the world) encodes
    toks = tok.tokenize(text) if hasattr(tok, "tokenize") else tok.encode(text).tokens
    return [t.removesuffix("</w>") for t in toks if not (t.startswith("<|") and t.endswith("|>"))]


def token_limit(tokenizer_dir: Path | None) -> int | None:
    """How many prompt tokens the text encoder reads (model_max_length less the start and end
    tokens), from the folder's tokenizer_config.json; None when it does not say."""
    import json

    cfg = Path(tokenizer_dir or "") / "tokenizer_config.json"
    if tokenizer_dir is None or not cfg.is_file():
        return None
    n = json.loads(cfg.read_text()).get("model_max_length")
    return int(n) - 2 if isinstance(n, int) and 2 < n < 100_000 else None


def too_long(tokenizer_dir: Path | None):
    """For read_prompt_set: why a prompt is longer than the text encoder reads, or None (no tokenizer)."""
    limit = token_limit(tokenizer_dir)
    if limit is None or _tokenizer(str(tokenizer_dir)) is None:
        return None

    def why(prompt: str) -> str | None:
        n = len(tokenize(prompt, tokenizer_dir) or [])
        return f"{n} tokens long, over the {limit} the text encoder reads ({len(prompt)} characters)" if n > limit else None

    return why


@functools.lru_cache(maxsize=8)
def _tokenizer(tokenizer_dir: str):
    d = Path(tokenizer_dir)
    if (d / "tokenizer.json").is_file():
        from tokenizers import Tokenizer

        return Tokenizer.from_file(str(d / "tokenizer.json"))
    if (d / "vocab.json").is_file() and (d / "merges.txt").is_file():
        from transformers import CLIPTokenizer

        return CLIPTokenizer.from_pretrained(str(d), local_files_only=True)
    return None


def split_words(prompts: list[str], tokenizer_dir: Path | None) -> dict[str, list[str]]:
    """Words of `prompts` that the tokenizer splits into more than one token -> their pieces
    (Stable Diffusion: a note, not an error; CLIP's byte-level BPE has no unknown words)."""
    import re

    out = {}
    for w in dict.fromkeys(w for p in prompts for w in re.findall(r"[A-Za-z0-9']+", p.lower())):
        toks = tokenize(w, tokenizer_dir)
        if toks is not None and len(toks) > 1:
            out[w] = toks
    return out
