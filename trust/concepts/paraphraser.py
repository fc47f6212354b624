"""More wordings of the target prompts from a local language model (`prompts.paraphraser`).

On Stable Diffusion there is no synonym table: the user lists the target prompts, and a local
causal language model (a transformers folder with safetensors weights, e.g. a small instruction
model; never downloaded, never unpickled, no remote code) can write `paraphrases_per_prompt`
more wordings of each, so the forget set covers wordings the held-out prompts may use. The
world uses its own table instead (trust/concepts/words.py).
"""

from __future__ import annotations

from pathlib import Path

INSTRUCTION = "Rewrite the image description in other words.\nDescription: {prompt}\nRewritten:"


def check_folder(folder: Path) -> str | None:
    """Why `folder` cannot be used (None when it can): it must hold config.json and safetensors weights."""
    folder = Path(folder)
    if not folder.is_dir():
        return f"folder {str(folder)!r} does not exist; give a local causal language model folder (transformers)"
    if not (folder / "config.json").is_file():
        return f"{str(folder)!r} has no config.json: not a transformers model folder"
    if not any(folder.glob("*.safetensors")):
        return (f"{str(folder)!r} has no *.safetensors weights (pickled weights are never loaded); save the model "
                "with save_pretrained(safe_serialization=True)")
    return None


def paraphrases(folder: Path, prompts: list[str], n: int, seed: int, max_new_tokens: int = 24) -> dict[str, list[str]]:
    """Up to `n` new wordings per prompt (sampled, seeded; empty lines and repeats dropped)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    problem = check_folder(folder)
    if problem:
        raise ValueError(f"prompts.paraphraser: {problem}")
    tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True, use_safetensors=True,
                                                 trust_remote_code=False).eval()
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    out = {}
    for i, p in enumerate(prompts):
        ids = tok(INSTRUCTION.format(prompt=p), return_tensors="pt")
        gen = torch.Generator().manual_seed(seed * 1_000_003 + i)
        with torch.no_grad(), torch.random.fork_rng():
            torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=gen)))
            seqs = model.generate(**ids, do_sample=True, top_p=0.95, max_new_tokens=max_new_tokens,
                                  num_return_sequences=n, pad_token_id=pad)
        texts = tok.batch_decode(seqs[:, ids["input_ids"].shape[1]:], skip_special_tokens=True)
        lines = [t.strip().split("\n")[0].strip() for t in texts]
        out[p] = [t for t in dict.fromkeys(lines) if t and t.lower() != p.lower()]
    return out
