"""The text side: a caption tokenizer, a small CLIP text encoder, and the pretrained SD 2.1 pair.

Two profiles:

- Tiny / micro: :func:`train_caption_tokenizer` trains a byte-level BPE on the caption corpus with
  the ``tokenizers`` library (every byte is in the vocabulary, so any prompt tokenises without
  unknown tokens) and wraps it as a ``transformers`` fast tokenizer laid out like CLIP's
  (``<|startoftext|>`` / ``<|endoftext|>``, pad = eos, 77 positions). :func:`tiny_text_encoder`
  builds a small, seeded ``CLIPTextModel`` for it.
- Paper scale: :func:`load_pretrained_text` reads the frozen Stable Diffusion 2.1 tokenizer and
  text encoder from a local folder (``tokenizer/`` and ``text_encoder/`` subfolders), offline.

:func:`encode_prompts` turns prompts into the ``(B, 77, hidden)`` conditioning the UNet attends to.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerFast

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = EOS_TOKEN  # as in CLIP: padding repeats the end-of-text token
SPECIAL_TOKENS = (BOS_TOKEN, EOS_TOKEN)  # ids 0 and 1 in a trained tokenizer
BOS_ID = 0
EOS_ID = 1
MAX_LENGTH = 77


def _corpus(captions: Iterable[str]) -> list[str]:
    """Sorted, de-duplicated, non-empty captions: training order no longer depends on input order."""
    return sorted({c for c in captions if isinstance(c, str) and c.strip()})


def train_caption_tokenizer(
    captions: Iterable[str],
    vocab_size: int = 2048,
    model_max_length: int = MAX_LENGTH,
    out_dir: str | Path | None = None,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on ``captions`` and wrap it as a CLIP-like fast tokenizer.

    Deterministic for the same set of captions (they are de-duplicated and sorted first). The
    vocabulary holds the two special tokens (ids 0, 1), all 256 byte symbols, then the merges; it
    may stay below ``vocab_size`` when the corpus runs out of pairs to merge. Calls pad to
    ``model_max_length`` and truncate (keeping bos/eos) when asked to (``padding="max_length",
    truncation=True``, what :func:`encode_prompts` does). With ``out_dir`` the tokenizer is also
    saved there (``save_pretrained``).
    """
    corpus = _corpus(captions)
    if not corpus:
        raise ValueError("train_caption_tokenizer: the caption corpus is empty")
    if model_max_length < 2:
        raise ValueError("model_max_length must leave room for the bos and eos tokens")

    tok = Tokenizer(models.BPE())  # no unk token: every byte has a symbol
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        show_progress=False,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(corpus, trainer=trainer, length=len(corpus))
    bos_id, eos_id = tok.token_to_id(BOS_TOKEN), tok.token_to_id(EOS_TOKEN)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A {EOS_TOKEN}",
        pair=f"{BOS_TOKEN} $A {EOS_TOKEN} $B {EOS_TOKEN}",
        special_tokens=[(BOS_TOKEN, bos_id), (EOS_TOKEN, eos_id)],
    )
    # Also set on the raw tokenizer so the saved tokenizer.json pads/truncates by itself.
    tok.enable_truncation(max_length=model_max_length)
    tok.enable_padding(length=model_max_length, pad_id=eos_id, pad_token=PAD_TOKEN, direction="right")

    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        model_max_length=model_max_length,
        padding_side="right",
        truncation_side="right",
        model_input_names=["input_ids", "attention_mask"],
    )
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        wrapped.save_pretrained(str(out))
    return wrapped


def tokenize_prompts(tokenizer, prompts: list[str]) -> torch.Tensor:
    """Token ids ``(B, model_max_length)``: bos + prompt + eos, padded and truncated (CLIP style)."""
    batch = tokenizer(
        list(prompts),
        padding="max_length",
        truncation=True,
        max_length=tokenizer.model_max_length,
        return_tensors="pt",
    )
    return batch["input_ids"]


def tiny_text_encoder(
    vocab_size: int,
    hidden_size: int = 32,
    layers: int = 2,
    heads: int = 2,
    max_positions: int = MAX_LENGTH,
    seed: int = 0,
    *,
    bos_token_id: int = BOS_ID,
    eos_token_id: int = EOS_ID,
    pad_token_id: int = EOS_ID,
) -> CLIPTextModel:
    """A small ``CLIPTextModel`` with seeded (deterministic) weights.

    The default special-token ids match :func:`train_caption_tokenizer`. ``eos_token_id`` matters:
    CLIP's pooled output is taken at the first eos position. Built in train mode with gradients
    on; freezing (``eval().requires_grad_(False)``) or training it is the caller's choice.
    """
    if hidden_size % heads:
        raise ValueError(f"hidden_size {hidden_size} is not divisible by heads {heads}")
    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=4 * hidden_size,
        projection_dim=hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=max_positions,
        hidden_act="gelu",
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
    )
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):  # leave the caller's global RNG untouched
        torch.manual_seed(seed)
        model = CLIPTextModel(config)
    return model


@torch.no_grad()
def encode_prompts(tokenizer, text_encoder: CLIPTextModel, prompts: list[str]) -> torch.Tensor:
    """The encoder's ``last_hidden_state`` for ``prompts``: ``(B, model_max_length, hidden)``."""
    if isinstance(prompts, str):
        prompts = [prompts]
    ids = tokenize_prompts(tokenizer, prompts).to(text_encoder.device)
    return text_encoder(input_ids=ids).last_hidden_state


def load_pretrained_text(folder: str | Path, freeze: bool = True):
    """``(tokenizer, text_encoder)`` from a local SD 2.1-layout folder, never downloading.

    ``folder`` must hold ``tokenizer/`` and ``text_encoder/`` subfolders (a Stable Diffusion 2.1
    diffusers folder, or a pipeline saved by this project). With ``freeze`` (the paper's setting)
    the encoder is put in eval mode with gradients off.
    """
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"pretrained text folder {str(root)!r} does not exist")
    for sub in ("tokenizer", "text_encoder"):
        if not (root / sub).is_dir():
            raise FileNotFoundError(
                f"pretrained text folder {str(root)!r} has no {sub!r} subfolder "
                f"(expected the SD 2.1 layout: tokenizer/ and text_encoder/)"
            )
    tokenizer = AutoTokenizer.from_pretrained(str(root / "tokenizer"), local_files_only=True)
    text_encoder = CLIPTextModel.from_pretrained(str(root / "text_encoder"), local_files_only=True)
    if freeze:
        text_encoder.eval().requires_grad_(False)
    return tokenizer, text_encoder
