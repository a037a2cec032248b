"""A randomly initialised HunyuanOCR checkpoint in the REAL 1.5 layout, for tests and benchmarks without the weights.

Everything but the weights' values is the published checkpoint's (hunyuanocr.md, "Facts added 2026-12"): the flat
config.json (text keys at the top, `vision_config` nested, `rope_scaling` xdrope), the special tokens at their real
ids in a 120818-entry vocabulary, the chat template, the image processor's settings, the weight names. So the
builder's model check, the in-process transformers engine, vLLM 0.18.1 (whose processor hard-codes ids 120118-120120
and 120002 and takes id vocab_size-1 as its placeholder) and llama.cpp's converter all load this one directory.

Two sizes: `TINY` (seconds to build; every test) and `REAL` (the real dimensions, ~1B parameters: it costs what
the real model costs per token, for the benchmarks). The answers are noise.

What is ours, not the published files': the ordinary vocabulary (byte-level BPE over the 256 bytes, then every
pair of ASCII letters and digits as a merge, then filler words of three letters or digits, so that any id decodes to
plain text); the names of the specials between 120003 and 120017; and untied output embeddings (the real model ties
them; with tied random weights a model only echoes its last input token).
"""

from __future__ import annotations

import itertools
import json
import os
import string
from pathlib import Path

VOCAB_SIZE = 120818
FIRST_SPECIAL = 120000
BOS = "<｜hy_begin▁of▁sentence｜>"  # 120000
EOS_NAME = "<｜hy_end▁of▁sentence｜>"  # 120001
PAD = "<｜hy_▁pad▁｜>"  # 120002: vLLM's processor hard-codes it
USER = "<｜hy_User｜>"  # ends the user's turn: the model answers after it
ASSISTANT = "<｜hy_Assistant｜>"  # ends an answer in a multi-turn history


def placeholder(n: int) -> str:
    return f"<｜hy_place▁holder▁no▁{n}｜>"


PLACEHOLDER_BASE = 120018  # placeholder(n) has id 120018 + n, up to n = 799 (id 120817 = vocab_size - 1)
END_OF_ANSWER = placeholder(2)  # 120020: eos in generation_config
SYSTEM_END = placeholder(3)  # 120021: closes the system message
IMAGE_START, IMAGE_END, IMAGE, IMAGE_NEWLINE = (placeholder(n) for n in (100, 101, 102, 103))  # 120118-120121

# Reconstructed from the official clients' requests (hunyuanocr.md, "Prompts": an empty system message, then the
# image and the instruction) and the tokens above; the answer follows the user's turn marker.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}{% if item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}" + SYSTEM_END + "{% elif message['role'] == 'user' %}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' or item['type'] == 'image_url' %}" + IMAGE_START + IMAGE + IMAGE_END + ""
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}" + USER + "{% elif message['role'] == 'assistant' %}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}{% if item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}" + ASSISTANT + "{% endif %}"
    "{% endfor %}"
)

# (text, vision) dimensions. TINY's head_dim is 32: vLLM's CPU attention refuses 16 on the first request, and
# llama.cpp's converter needs at least 3 vision layers.
TINY = {
    "text": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "head_dim": 32, "xdrope_section": [4, 4, 4, 4]},
    "vision": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3, "num_attention_heads": 2},
}  # fmt: skip
REAL = {
    "text": {"hidden_size": 1024, "intermediate_size": 3584, "num_hidden_layers": 24, "num_attention_heads": 16,
             "num_key_value_heads": 8, "head_dim": 128, "xdrope_section": [16, 16, 16, 16]},
    "vision": {"hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 27, "num_attention_heads": 16},
}  # fmt: skip
SIZES = {"tiny": TINY, "real": REAL}

# The processor's real settings: 512*512 .. 2048*2048 pixels, CLIP normalisation, 16-pixel patches merged 2x2.
PREPROCESSOR = {
    "image_processor_type": "HunYuanVLImageProcessor",
    "processor_class": "HunYuanVLProcessor",
    "min_pixels": 512 * 512,
    "max_pixels": 2048 * 2048,
    "patch_size": 16,
    "temporal_patch_size": 1,
    "merge_size": 2,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "do_resize": True,
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "do_convert_rgb": True,
    "resample": 3,
}


def _ordinary_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Bytes, then ASCII letter/digit pairs (each a merge), then three-character fillers up to id 119999."""
    from tokenizers import pre_tokenizers

    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    alnum = string.ascii_letters + string.digits
    merges = [(a, b) for a, b in itertools.product(alnum, repeat=2)]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    for letters in itertools.product(alnum, repeat=3):
        if len(vocab) == FIRST_SPECIAL:
            break
        vocab["".join(letters)] = len(vocab)
    return vocab, merges


def special_tokens() -> list[str]:
    """The tokens at ids 120000 .. 120817, in id order."""
    named = [BOS, EOS_NAME, PAD, USER, ASSISTANT]
    named += [f"<｜hy_special▁{n}｜>" for n in range(len(named), PLACEHOLDER_BASE - FIRST_SPECIAL)]
    return named + [placeholder(n) for n in range(VOCAB_SIZE - PLACEHOLDER_BASE)]


def _tokenizer():
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab, merges = _ordinary_vocab()
    specials = special_tokens()
    for token in specials:
        vocab[token] = len(vocab)
    assert len(vocab) == VOCAB_SIZE and vocab[IMAGE] == 120120 and vocab[PAD] == 120002
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    # Specials in the vocabulary itself (so vocab_size counts them, as vLLM expects) and marked special (never
    # split, dropped by decode(skip_special_tokens=True)).
    backend.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in specials])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=END_OF_ANSWER,
        pad_token=PAD,
        extra_special_tokens={"image_token": IMAGE, "image_start_token": IMAGE_START, "image_end_token": IMAGE_END},
        chat_template=CHAT_TEMPLATE,
        model_max_length=32768,
    )


def config_json(size: dict) -> dict:
    """The published config.json's shape: text keys flat at the top, vision nested."""
    text, vision = dict(size["text"]), size["vision"]
    section = text.pop("xdrope_section")
    return {
        "architectures": ["HunYuanVLForConditionalGeneration"],
        "model_type": "hunyuan_vl",
        "vocab_size": VOCAB_SIZE,
        **text,
        "hidden_act": "silu",
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-05,
        "rope_theta": 10000.0,
        "rope_scaling": {"type": "xdrope", "alpha": 1000.0, "factor": 1.0, "xdrope_section": section},
        "attention_bias": False,
        "mlp_bias": False,
        "use_qk_norm": True,
        "initializer_range": 0.02,
        "tie_word_embeddings": False,
        "bos_token_id": 120000,
        "eos_token_id": 120020,
        "pad_token_id": 120002,
        "eod_token_id": 120020,
        "sep_token_id": 120021,
        "image_start_token_id": 120118,
        "image_end_token_id": 120119,
        "image_token_id": 120120,
        "image_newline_token_id": 120121,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.49.0",  # as published; 4.57.2-5.0 would make vLLM warn spuriously
        "vision_config": {
            **vision,
            "hidden_act": "gelu",
            "patch_size": 16,
            "spatial_merge_size": 2,
            "num_channels": 3,
            "out_hidden_size": text["hidden_size"],
            "rms_norm_eps": 1e-05,
            "interpolate_mode": "bilinear",
            "max_image_size": 2048,
            "max_vit_seq_len": 16384,
        },
    }


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def build_checkpoint(path: str | os.PathLike, size: str = "tiny", seed: int = 3) -> Path:
    """Write a random HunyuanOCR checkpoint of `size` ("tiny" or "real") into `path` and return it.

    Seed 3 makes the tiny model answer a page with varied text instead of one token over and over (seeds 1, 2
    and 8 loop at once), so streams last long enough to be cut and answers differ between prompts."""
    import torch
    from transformers import HunYuanVLConfig, HunYuanVLForConditionalGeneration

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = config_json(SIZES[size])
    torch.manual_seed(seed)
    model_config = HunYuanVLConfig(**config)
    model_config.tie_word_embeddings = model_config.text_config.tie_word_embeddings = False  # see the docstring
    model = HunYuanVLForConditionalGeneration(model_config).eval()
    if size == "real":
        model = model.to(torch.bfloat16)  # as published: 2 GB instead of 4
    model.save_pretrained(path)
    _write_json(path / "config.json", config)  # the published shape, not transformers 5's nested rewrite
    _write_json(
        path / "generation_config.json",
        {"bos_token_id": 120000, "eos_token_id": 120020, "pad_token_id": 120002, "do_sample": False,
         "transformers_version": "4.49.0"},
    )  # fmt: skip
    _tokenizer().save_pretrained(path)
    # What transformers 4.x (vLLM 0.18's) and 5.x both read: the generic fast class, the image tokens by name.
    tokenizer_config = json.loads((path / "tokenizer_config.json").read_text(encoding="utf-8"))
    tokenizer_config["tokenizer_class"] = "PreTrainedTokenizerFast"
    tokenizer_config["extra_special_tokens"] = {
        name: tokenizer_config.pop(name) for name in ("image_token", "image_start_token", "image_end_token")
    }
    _write_json(path / "tokenizer_config.json", tokenizer_config)
    _write_json(path / "preprocessor_config.json", PREPROCESSOR)
    _write_json(path / "chat_template.json", {"chat_template": CHAT_TEMPLATE})
    return path


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path")
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    args = parser.parse_args()
    print(build_checkpoint(args.path, args.size))
