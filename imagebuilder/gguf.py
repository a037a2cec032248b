"""A HunyuanOCR checkpoint -> the two GGUF files llama-server loads: the text model and the vision projector (mmproj).

The converter is llama.cpp's own `convert_hf_to_gguf.py` with its vendored `gguf-py`, from the pinned sdist
(imagebuilder.llamacpp_source), run with this Python: it imports torch, numpy, transformers (AutoConfig, and
AutoTokenizer for the vocabulary), pyyaml, tqdm and requests (gguf-py), all already the builder's dependencies. It
writes f16 and q8_0 itself; q4_k_m is made from the f16 file by llama-quantize, built from the same tree.

One workaround, applied in the converter's process only (`_run_converter`): the converter names the tokenizer's
pre-tokenizer by the hash of a test string's tokens and refuses hashes it does not know. HunyuanOCR's tokenizer is
Hunyuan-dense's (upstream converted tencent/HunyuanOCR with it); a checkpoint whose hash is unknown (a synthetic
test tokenizer) is written as "hunyuan-dense" with a warning instead of failing.

Text model quantization, the trade-off (`--set cpu_model_quant=`). The mmproj always stays f16: a q8_0 projector
(ffn_down stays f16 anyway: 4304 columns are not whole 32-blocks) read a 0.75 MP page slower, 41.0 s against 33.4 s
(AVX2, 2 threads, `bench.llamacpp --gguf`, 2026-12-03; the spike saw no difference on Sapphire Rapids), and every
pixel of the page goes through it:
  f16     ~2.0 GB for the text model; the reference's numbers; decode is memory-bound, so the slowest.
  q8_0    ~0.57 GB (real dimensions); 8-bit blocks with one scale per 32 weights, generally taken as
          indistinguishable from f16 in LLM quality; faster decode than f16 (half the bytes per token). The default.
  q4_k_m  ~0.35 GB; the fastest decode (fewer bytes per token) but a measurable accuracy loss on a 0.5B decoder,
          where OCR must copy characters exactly (small models lose most from 4-bit); only for PCs short of RAM.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from imagebuilder import llamacpp_source

QUANTS = ("f16", "q8_0", "q4_k_m")
DEFAULT_QUANT = "q8_0"
_CONVERTER_TYPES = {"f16": "f16", "q8_0": "q8_0"}  # what convert_hf_to_gguf.py --outtype writes itself
_FALLBACK_PRE = "hunyuan-dense"


def text_name(quant: str) -> str:
    return f"hunyuanocr-{quant}.gguf"


MMPROJ_NAME = "mmproj-hunyuanocr-f16.gguf"


def _run_converter(tree: Path, argv: list[str]) -> None:
    """In the converter's own process (`python -m imagebuilder.gguf TREE ARGS...`): import it from the tree, name
    an unknown pre-tokenizer hunyuan-dense (module docstring), run its main() with ARGS."""
    sys.path[:0] = [str(tree), str(tree / "gguf-py")]
    import logging

    from conversion import base

    original = base.TextModel.get_vocab_base_pre

    def get_vocab_base_pre(self, tokenizer) -> str:
        try:
            return original(self, tokenizer)
        except NotImplementedError:
            if type(self).__name__ != "HunyuanVLTextModel":
                raise
            logging.getLogger("imagebuilder.gguf").warning(
                "unknown pre-tokenizer hash for a HunyuanOCR tokenizer: writing %r", _FALLBACK_PRE
            )
            return _FALLBACK_PRE

    base.TextModel.get_vocab_base_pre = get_vocab_base_pre
    sys.argv = [str(tree / "convert_hf_to_gguf.py"), *argv]
    import convert_hf_to_gguf

    convert_hf_to_gguf.main()


def _convert(tree: Path, model_dir: Path, out: Path, outtype: str, mmproj: bool, log=None) -> Path:
    partial = out.with_name(out.name + ".partial")
    command = [sys.executable, "-m", "imagebuilder.gguf", str(tree), str(model_dir), "--outtype", outtype]
    command += ["--outfile", str(partial), *(["--mmproj"] if mmproj else [])]
    # The converter downloads nothing for a local directory; the offline switches make sure transformers does not.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    subprocess.run(command, check=True, env=env, cwd=Path(__file__).resolve().parent.parent, stdout=log, stderr=log)
    partial.replace(out)
    return out


def quantize(llama_quantize: str | os.PathLike, source: Path, out: Path, quant: str, log=None) -> Path:
    """llama-quantize SOURCE (f16) -> OUT in `quant` (e.g. q4_k_m)."""
    partial = out.with_name(out.name + ".partial")
    subprocess.run(
        [str(llama_quantize), str(source), str(partial), quant.upper()], check=True, stdout=log, stderr=log
    )
    partial.replace(out)
    return out


def convert(
    model_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    quant: str = DEFAULT_QUANT,
    cache_dir: str | os.PathLike = "cache",
    llama_quantize: str | os.PathLike | None = None,
    log=None,
) -> tuple[Path, Path]:
    """(text GGUF, mmproj GGUF) for the checkpoint in `model_dir`, written into `out_dir` as
    hunyuanocr-<quant>.gguf and mmproj-hunyuanocr-f16.gguf. q4_k_m needs `llama_quantize` (the host build's
    llama-quantize by default). `log`: a file for the converter's output (default: ours)."""
    if quant not in QUANTS:
        raise ValueError(f"unknown quantization {quant!r}; choose one of: {', '.join(QUANTS)}")
    model_dir, out_dir = Path(model_dir).resolve(), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tree = llamacpp_source.source_tree(cache_dir).resolve()
    mmproj = _convert(tree, model_dir, out_dir / MMPROJ_NAME, "f16", mmproj=True, log=log)
    text = out_dir / text_name(quant)
    if quant in _CONVERTER_TYPES:
        _convert(tree, model_dir, text, _CONVERTER_TYPES[quant], mmproj=False, log=log)
    else:
        f16 = _convert(tree, model_dir, out_dir / text_name("f16.tmp"), "f16", mmproj=False, log=log)
        tool = llama_quantize or llamacpp_source.host_bin_dir(cache_dir) / "llama-quantize"
        try:
            quantize(tool, f16, text, quant, log=log)
        finally:
            f16.unlink(missing_ok=True)
    return text, mmproj


if __name__ == "__main__":
    _run_converter(Path(sys.argv[1]), sys.argv[2:])
