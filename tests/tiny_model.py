"""A tiny, randomly initialised HunyuanOCR-shaped model on disk, for tests without the real weights.

Same classes as the real checkpoint (HunYuanVLConfig / HunYuanVLForConditionalGeneration / HunYuanVLProcessor), so
`AutoProcessor` + `AutoModelForImageTextToText` load it from a local directory and `generate()` runs the whole real
path (chat template, image placeholders, multimodal RoPE, vision tower). Its answers are noise, but deterministic.

Tokenizer: byte-level with no merges, so any text (the Chinese prompts included) round-trips through it, and tests
can decode the input ids and find the prompt in them.
"""

from __future__ import annotations

import os
from pathlib import Path

# Byte-level vocabulary first, then the special tokens; the ids below follow from this order.
SPECIAL_TOKENS = {
    "pad_token": "<pad>",
    "bos_token": "<bos>",
    "eos_token": "<eos>",
    "image_start_token": "<img_start>",
    "image_end_token": "<img_end>",
    "image_token": "<img>",
}
ROLE_TOKENS = ["<sep>", "<user>", "<assistant>", "<img_newline>"]

# System (possibly empty), then the user's image and text, then the assistant turn; the HunyuanOCR layout in spirit.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}<sep>"
    "{% elif message['role'] == 'user' %}<user>"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<img_start><img><img_end>"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{% elif message['role'] == 'assistant' %}<assistant>{{ message['content'] }}<eos>"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


def _tokenizer():
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    byte_chars = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(byte_chars))}
    for token in [*SPECIAL_TOKENS.values(), *ROLE_TOKENS]:
        vocab[token] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    # Special in the backend itself: never split into bytes, and dropped by decode(skip_special_tokens=True).
    backend.add_special_tokens(
        [AddedToken(token, special=True, normalized=False) for token in [*SPECIAL_TOKENS.values(), *ROLE_TOKENS]]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=SPECIAL_TOKENS["pad_token"],
        bos_token=SPECIAL_TOKENS["bos_token"],
        eos_token=SPECIAL_TOKENS["eos_token"],
        extra_special_tokens={k: SPECIAL_TOKENS[k] for k in ("image_token", "image_start_token", "image_end_token")},
        chat_template=CHAT_TEMPLATE,
    )
    return tokenizer


def build_tiny_model(path: str | os.PathLike, seed: int = 1) -> Path:
    """Write a tiny HunyuanOCR-shaped model + processor into `path` (created if needed) and return it.

    Seed 1 gives answers of varied bytes without an early end-of-sequence for the test images (other seeds may
    stop at once or repeat one token, which makes comparisons between engines say little).
    """
    import torch
    from transformers import HunYuanVLConfig, HunYuanVLForConditionalGeneration, HunYuanVLProcessor
    from transformers.models.hunyuan_vl.image_processing_pil_hunyuan_vl import HunYuanVLImageProcessorPil

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = _tokenizer()
    ids = tokenizer.convert_tokens_to_ids
    config = HunYuanVLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 16,
            "max_position_embeddings": 4096,
            # 4 multimodal RoPE axes (position, width, height, image index) summing to head_dim / 2.
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 2, 2, 2]},
            "pad_token_id": ids("<pad>"),
            "bos_token_id": ids("<bos>"),
            "eos_token_id": ids("<eos>"),
            "eod_token_id": ids("<eos>"),
            "sep_token_id": ids("<sep>"),
            # Untied: with tied random embeddings the model just echoes its last input token forever.
            "tie_word_embeddings": False,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "patch_size": 16,
            "spatial_merge_size": 2,
            "out_hidden_size": 64,
        },
        image_token_id=ids("<img>"),
        im_start_id=ids("<img_start>"),
        im_end_id=ids("<img_end>"),
        im_newline_id=ids("<img_newline>"),
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = HunYuanVLForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = ids("<pad>")
    model.generation_config.eos_token_id = ids("<eos>")
    model.save_pretrained(path)

    # Small images keep the vision sequence short: the real defaults are 512*512 .. 2048*2048 pixels.
    image_processor = HunYuanVLImageProcessorPil(min_pixels=64 * 64, max_pixels=256 * 256)
    processor = HunYuanVLProcessor(image_processor=image_processor, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE)
    processor.save_pretrained(path)
    return path


if __name__ == "__main__":
    import sys

    print(build_tiny_model(sys.argv[1] if len(sys.argv) > 1 else "tiny-hunyuan"))
