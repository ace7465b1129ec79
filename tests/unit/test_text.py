"""The text side: caption tokenizer (byte-level BPE), tiny CLIP text encoder, pretrained loading."""

from __future__ import annotations

import random

import pytest
import torch

from components.model.text import (
    BOS_TOKEN,
    EOS_TOKEN,
    encode_prompts,
    load_pretrained_text,
    tiny_text_encoder,
    tokenize_prompts,
    train_caption_tokenizer,
)

LANDFORMS = ["deserts", "hills", "mountains", "forests", "glaciers", "wetlands", "grasslands",
             "coasts", "valleys", "plateaus", "dunes", "lakes", "rivers", "snowfields"]
COUNTRIES = ["Chile", "Norway", "Kenya", "Peru", "Nepal", "Canada", "Spain", "Iceland",
             "Mongolia", "Australia", "Morocco", "Bolivia"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December"]
OPENERS = ["A Sentinel-2 image of", "A satellite view of", "An image of"]


def synthetic_captions(n: int = 200, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [
        f"{rng.choice(OPENERS)} {rng.choice(LANDFORMS)} and {rng.choice(LANDFORMS)} "
        f"in {rng.choice(COUNTRIES)} in {rng.choice(MONTHS)}"
        for _ in range(n)
    ]


@pytest.fixture(scope="module")
def captions() -> list[str]:
    return synthetic_captions()


@pytest.fixture(scope="module")
def tokenizer(captions):
    return train_caption_tokenizer(captions, vocab_size=2048)


def test_caption_round_trips_through_encode_decode(tokenizer, captions):
    for caption in captions[:20]:
        ids = tokenizer(caption)["input_ids"]
        assert tokenizer.decode(ids, skip_special_tokens=True) == caption
    # The corpus's words became merged tokens: far fewer ids than bytes.
    assert len(tokenizer(captions[0])["input_ids"]) < len(captions[0].encode()) / 2


def test_unseen_prompt_with_unicode_and_digits_tokenises_without_unknowns(tokenizer):
    prompt = "Glaciärs über 4810 m near Nuñez, 東京 — 42°N ❄"
    ids = tokenizer(prompt)["input_ids"]
    assert tokenizer.unk_token_id is None
    assert all(0 <= i < len(tokenizer) for i in ids)
    assert tokenizer.decode(ids, skip_special_tokens=True) == prompt


def test_padding_and_truncation_to_77_with_bos_and_eos(tokenizer, captions):
    assert tokenizer.model_max_length == 77
    bos, eos = tokenizer.convert_tokens_to_ids([BOS_TOKEN, EOS_TOKEN])
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (bos, eos, eos)
    long_prompt = " ".join(captions[:30])
    ids = tokenize_prompts(tokenizer, [captions[0], long_prompt])
    assert ids.shape == (2, 77)
    assert (ids[:, 0] == bos).all()
    short = tokenizer(captions[0])["input_ids"]
    assert ids[0, : len(short)].tolist() == short and short[-1] == eos
    assert (ids[0, len(short):] == eos).all()  # padded with eos, as CLIP does
    assert ids[1, -1] == eos and (ids[1, 1:-1] != eos).all()  # truncated, eos kept


def test_same_corpus_gives_identical_vocab(captions):
    first = train_caption_tokenizer(captions, vocab_size=512)
    second = train_caption_tokenizer(list(reversed(captions)) + captions[:10], vocab_size=512)
    assert first.get_vocab() == second.get_vocab()
    assert first.backend_tokenizer.to_str() == second.backend_tokenizer.to_str()


def test_save_load_round_trip_gives_identical_ids(tmp_path, captions):
    from transformers import AutoTokenizer

    trained = train_caption_tokenizer(captions, vocab_size=512, out_dir=tmp_path / "tok")
    loaded = AutoTokenizer.from_pretrained(str(tmp_path / "tok"), local_files_only=True)
    prompts = [captions[3], "Ünseen 2024 prompt ✓", " ".join(captions[:20])]
    assert torch.equal(tokenize_prompts(trained, prompts), tokenize_prompts(loaded, prompts))
    assert loaded.model_max_length == 77 and loaded.pad_token_id == trained.pad_token_id


def test_text_encoder_is_deterministic_for_a_seed_with_shape_b_77_hidden(tokenizer, captions):
    prompts = captions[:3]
    a = encode_prompts(tokenizer, tiny_text_encoder(len(tokenizer), hidden_size=32, seed=7), prompts)
    b = encode_prompts(tokenizer, tiny_text_encoder(len(tokenizer), hidden_size=32, seed=7), prompts)
    c = encode_prompts(tokenizer, tiny_text_encoder(len(tokenizer), hidden_size=32, seed=8), prompts)
    assert a.shape == (3, 77, 32)
    assert not a.requires_grad
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_load_pretrained_text_on_empty_folder_names_folder_and_subfolder(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_pretrained_text(tmp_path)
    assert str(tmp_path) in str(err.value) and "tokenizer" in str(err.value)
    (tmp_path / "tokenizer").mkdir()
    with pytest.raises(FileNotFoundError, match="text_encoder"):
        load_pretrained_text(tmp_path)


def test_load_pretrained_text_reads_the_sd_layout(tmp_path, tokenizer, captions):
    tokenizer.save_pretrained(str(tmp_path / "tokenizer"))
    encoder = tiny_text_encoder(len(tokenizer), seed=3)
    encoder.save_pretrained(str(tmp_path / "text_encoder"))
    tok2, enc2 = load_pretrained_text(tmp_path)
    assert not any(p.requires_grad for p in enc2.parameters())
    encoder.eval()
    assert torch.allclose(encode_prompts(tokenizer, encoder, captions[:2]),
                          encode_prompts(tok2, enc2, captions[:2]))
