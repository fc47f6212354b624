"""`trust params check`: validate params.yaml before any work.

Kept free of torch on the CLI side: only trust.config (and the torch-free concept checks) are
imported, when the command runs.
"""

from __future__ import annotations

from pathlib import Path

import typer

from trust.cli.app import PARAMS_OPT, _params, app, console

params_app = typer.Typer(help="params.yaml: validate before work.", no_args_is_help=True)
app.add_typer(params_app, name="params")


@params_app.command("check")
def params_check(params: Path = PARAMS_OPT) -> None:
    """Validate params.yaml: the schema (unknown keys, types, impossible values), the concept spec
    (labels, templates, anchor, words) and the files it names (attack prompt set, CLIP folder)."""
    p = _params(params)
    console.print(f"[green]{params}: valid[/] (base model: {p.model.base}, built-in world: {p.uses_world})")
    for c in p.concepts:
        console.print(f"concept {c.name!r} ({c.kind}): erase {c.detect}; keep {c.keep}; "
                      f"{len(c.target)} target and {len(c.preserve)} preservation template(s); anchor {c.anchor!r}")
    if len(p.concepts) > 1:
        console.print(f"{len(p.concepts)} concepts erased in one run; kept: {p.kept}")
    for note in word_notes(p):
        console.print(f"[yellow]note:[/] {note}")


def word_notes(p) -> list[str]:
    """What the tokenizer does with words that are not (world) or not single (SD) tokens: a note,
    not an error (the world's concept words are errors already, in the schema)."""
    from trust.concepts.spec import split_words, tokenize
    from trust.concepts.words import unknown_words
    from trust.utils.prompt_csv import read_prompt_set

    csv_prompts = [r[0] for r in read_prompt_set(p.evaluate.attacks.prompt_set)]
    out = []
    if p.uses_world:
        tok = p.world.model_dir / "tokenizer"
        for w in dict.fromkeys(w for q in csv_prompts for w in unknown_words(q)):
            out.append(f"evaluate.attacks.prompt_set: {w!r} is not a world word; the tokenizer reads it as "
                       f"{' + '.join(map(repr, tokenize(w, tok) or [w]))}")
        return out
    tok = p.model.base / "tokenizer"
    fields = []
    for i, c in enumerate(p.concepts):
        at = "concept" if len(p.concepts) == 1 else f"concept[{i}]"
        fields += [(f"{at}.target", list(c.target)), (f"{at}.anchor", [c.anchor]), (f"{at}.preserve", list(c.preserve))]
    for field, prompts in fields + [("evaluate.attacks.prompt_set", csv_prompts)]:
        for w, toks in split_words(prompts, tok).items():
            out.append(f"{field}: {w!r} is not one token of the model's tokenizer; it becomes {' + '.join(map(repr, toks))}")
    return out

