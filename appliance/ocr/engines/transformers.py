"""HunyuanOCR in-process with transformers: the engine for a GPU without a vLLM server (and for tests on CPU).

Loads only from a local directory (local_files_only, and HF_HUB_OFFLINE set before transformers is imported), so
nothing here can reach the network. Decoding follows the official recipe: empty system message, the chat template,
greedy, eager attention, bf16 on CUDA, special tokens skipped. transformers' generate() has no stop on repetition,
so a StoppingCriteria watches the decoded tail with parse.is_looping (the same test the model servers' client uses).
The answer streams to `on_text` through a generation streamer, as the model servers' client streams it.
"""

from __future__ import annotations

from PIL import Image

from appliance.ocr import parse
from appliance.ocr.engines.base import OnText
from appliance.ocr.engines.hunyuan import HunyuanEngine, Throttled
from appliance.ocr.errors import EngineUnavailable
from appliance.offline import go_offline

NAME = "hunyuan-transformers"

# Before anything here imports transformers / huggingface_hub, which read these once. The appliance never downloads.
go_offline()


def _import_stack():
    """torch and transformers, or EngineUnavailable saying how to get them."""
    try:
        import torch
        import transformers
    except ImportError as error:
        raise EngineUnavailable(NAME, f"{error.name} is not installed (pip install '.[transformers]')") from None
    if not hasattr(transformers, "HunYuanVLForConditionalGeneration"):
        raise EngineUnavailable(
            NAME, f"transformers {transformers.__version__} has no HunYuanVL model; it needs transformers >= 5.13"
        )
    return torch, transformers


def looping_stop(tokenizer, prompt_length: int, every: int = 32, tail_tokens: int = 2048):
    """A StoppingCriteria that ends generation once the answer's tail is an endless repetition.

    Decodes only every `every` new tokens and only the last `tail_tokens` of them: parse.is_looping reads at most
    a few thousand characters of tail, so the check stays cheap however long the answer gets.
    """
    import torch
    from transformers import StoppingCriteria

    class LoopingStop(StoppingCriteria):
        def __init__(self):
            self.triggered = False

        def __call__(self, input_ids, scores, **kwargs):
            new_count = input_ids.shape[1] - prompt_length
            done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
            if new_count <= 0 or new_count % every:
                return done
            start = max(prompt_length, input_ids.shape[1] - tail_tokens)
            for row, ids in enumerate(input_ids[:, start:]):
                tail = tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
                if parse.is_looping(tail):
                    done[row] = True
                    self.triggered = True
            return done

    return LoopingStop()


def text_streamer(tokenizer, report: Throttled):
    """A generation streamer that `report`s the answer so far: generate() hands it the prompt once, then each new
    token (one sequence: the engine sends one page at a time)."""
    from transformers.generation.streamers import BaseStreamer

    class TextReport(BaseStreamer):
        def __init__(self):
            self.prompt_seen = False
            self.ids: list[int] = []

        def put(self, value):
            if not self.prompt_seen:
                self.prompt_seen = True
                return
            self.ids.extend(value.reshape(-1).tolist())
            report(self.text, len(self.ids))

        def text(self) -> str:
            return tokenizer.decode(self.ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

        def end(self):
            pass

    return TextReport()


class TransformersEngine(HunyuanEngine):
    name = NAME

    def __init__(self, model_dir, device: str | None = None, max_new_tokens: int = 4096):
        super().__init__(model_dir)  # checks the directory before the slow imports
        torch, transformers = _import_stack()
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            self.device = torch.device(device)
        except RuntimeError:
            raise EngineUnavailable(NAME, f"unknown device '{device}' (use cpu, cuda or cuda:N)") from None
        if self.device.type == "cuda":
            if not torch.cuda.is_available():
                raise EngineUnavailable(NAME, "CUDA was asked for but torch sees no usable GPU")
            if self.device.index is None:  # record which GPU, "cuda:0", not just "cuda"
                self.device = torch.device("cuda", torch.cuda.current_device())
        # bf16 is what the model was trained and published in; CPUs run fp32 much faster than emulated bf16.
        self.torch_dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.dtype = str(self.torch_dtype).removeprefix("torch.")
        self.max_new_tokens = max_new_tokens
        try:
            self.processor = transformers.AutoProcessor.from_pretrained(self.model_dir, local_files_only=True)
            self.model = transformers.AutoModelForImageTextToText.from_pretrained(
                self.model_dir, local_files_only=True, attn_implementation="eager", dtype=self.torch_dtype
            )
        except (OSError, ValueError, KeyError) as error:
            raise EngineUnavailable(NAME, f"cannot load the model from {self.model_dir}: {error}") from error
        self.model.to(self.device).eval()
        self.info.device = str(self.device)
        self.last_stopped_looping = False  # for callers and tests: did the repetition guard end the last answer

    def chat_text(self, image: Image.Image, prompt: str) -> str:
        """The prompt through the model's chat template; the official clients send an empty system message."""
        messages = [
            {"role": "system", "content": ""},
            {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": prompt}]},
        ]
        return self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def generate(self, image: Image.Image, prompt: str, on_text: OnText | None = None) -> str:
        import torch

        text = self.chat_text(image, prompt)
        inputs = self.processor(text=[text], images=[image], padding=True, return_tensors="pt")
        # All of it goes to generate(), mm_token_type_ids included: the model needs it for multimodal RoPE.
        inputs = inputs.to(self.device)
        prompt_length = inputs["input_ids"].shape[1]
        tokenizer = self.processor.tokenizer
        stop = looping_stop(tokenizer, prompt_length)
        streaming = {"streamer": text_streamer(tokenizer, Throttled(on_text))} if on_text else {}
        with torch.inference_mode():
            output = self.model.generate(
                **inputs,
                max_new_tokens=self.max_new_tokens,
                do_sample=False,
                repetition_penalty=self.repetition_penalty,
                stopping_criteria=[stop],
                pad_token_id=tokenizer.pad_token_id,
                **streaming,
            )
        self.last_stopped_looping = stop.triggered
        new_tokens = output[0, prompt_length:]
        return tokenizer.decode(new_tokens, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def close(self) -> None:
        model = getattr(self, "model", None)
        if model is None:
            return
        self.model = None
        del model
        import gc

        import torch

        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
