from transformers import CLIPTokenizer

from trust.world.captions import all_words
from trust.world.tokenizer import learn_merges


def test_every_world_word_is_one_token(world_tokenizer):
    for w in all_words():
        ids = world_tokenizer(w, add_special_tokens=False).input_ids
        assert len(ids) == 1, (w, ids)


def test_round_trip_and_special_tokens(world_tokenizer):
    text = "a picture of an emerald disk on a striped background"
    ids = world_tokenizer(text).input_ids
    assert ids[0] == world_tokenizer.bos_token_id and ids[-1] == world_tokenizer.eos_token_id
    assert world_tokenizer.decode(ids, skip_special_tokens=True) == text
    padded = world_tokenizer(text, padding="max_length", max_length=world_tokenizer.model_max_length).input_ids
    assert len(padded) == world_tokenizer.model_max_length


def test_unknown_words_fall_back_to_characters(world_tokenizer):
    ids = world_tokenizer("zebra", add_special_tokens=False).input_ids
    assert len(ids) > 1 and world_tokenizer.unk_token_id not in ids


def test_saved_tokenizer_loads_offline_identically(world_tokenizer, tmp_path):
    world_tokenizer.save_pretrained(tmp_path)
    loaded = CLIPTokenizer.from_pretrained(tmp_path, local_files_only=True)
    text = "a golden three sided shape"
    assert loaded(text).input_ids == world_tokenizer(text).input_ids
    assert loaded.model_max_length == world_tokenizer.model_max_length


def test_merges_are_deterministic():
    words = ["green", "red", "grey", "reed"]
    assert learn_merges(words) == learn_merges(list(reversed(words)))
