"""The local-LLM paraphraser (prompts.paraphraser): its real code path on a tiny causal LM built
from a config (random weights: the wordings are noise, the plumbing is what is tested)."""

from __future__ import annotations

import pytest
import torch

from trust.concepts import build_prompt_sets
from trust.concepts.paraphraser import check_folder, paraphrases
from trust.config import ConceptParams, PromptsParams


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory, world_tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel

    folder = tmp_path_factory.mktemp("lm")
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(world_tokenizer), n_positions=512, n_embd=16, n_layer=1,
                                       n_head=2, bos_token_id=world_tokenizer.bos_token_id,
                                       eos_token_id=world_tokenizer.eos_token_id))
    model.save_pretrained(folder, safe_serialization=True)
    world_tokenizer.save_pretrained(folder)
    return folder


def test_paraphrases_are_seeded_new_and_join_the_split(tiny_lm):
    prompts = ["a photo of a nude person", "a naked man on a beach"]
    a = paraphrases(tiny_lm, prompts, 3, seed=0)
    assert a == paraphrases(tiny_lm, prompts, 3, seed=0)  # seeded
    assert a != paraphrases(tiny_lm, prompts, 3, seed=1)
    assert set(a) == set(prompts) and all(q not in prompts and q for qs in a.values() for q in qs)
    concept = ConceptParams(name="nudity", detect={"concept": "nudity"}, target=prompts, anchor="a photo of a person",
                            preserve=["a photo of a person"], keep=[])
    sets = build_prompt_sets(concept, PromptsParams(paraphraser=tiny_lm, paraphrases_per_prompt=3), world=False)
    every = [r["prompt"] for s in ("train", "val", "eval") for r in sets["target"][s]]
    assert set(every) == set(prompts) | {q for qs in a.values() for q in qs}
    assert all(r["anchor"] == "a photo of a person" and "source" not in r for r in sets["target"]["train"])


def test_only_safetensors_folders_are_used(tmp_path, tiny_lm):
    assert check_folder(tiny_lm) is None
    assert "does not exist" in check_folder(tmp_path / "nope")
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04pickle")
    assert "no *.safetensors weights (pickled weights are never loaded)" in check_folder(tmp_path)
    with pytest.raises(ValueError, match="prompts.paraphraser"):
        paraphrases(tmp_path, ["a"], 1, 0)
