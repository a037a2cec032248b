"""llama.cpp from the pinned sdist (imagebuilder.llamacpp_source) and the real GGUF conversion of the tiny real-layout
checkpoint (imagebuilder.gguf), read back with the sdist's own gguf-py."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from imagebuilder import gguf, llamacpp_source

ROOT = Path(__file__).resolve().parent.parent.parent
CACHE = ROOT / "cache"


@pytest.fixture(scope="module")
def gguf_reader():
    """gguf-py's GGUFReader from the sdist's tree (the converter's own reader)."""
    tree = llamacpp_source.source_tree(CACHE)
    sys.path.insert(0, str(tree / "gguf-py"))
    try:
        from gguf import GGUFReader

        yield GGUFReader
    finally:
        sys.path.remove(str(tree / "gguf-py"))


def fields(reader) -> dict:
    """GGUF metadata as plain values (strings decoded, arrays as lists)."""
    out = {}
    for name, field in reader.fields.items():
        values = [field.parts[i] for i in field.data]
        if field.types and field.types[-1].name == "STRING":
            values = [bytes(v).decode("utf-8") for v in values]
        else:
            values = [v.tolist()[0] if len(v) == 1 else v.tolist() for v in values]
        out[name] = values if field.types and field.types[0].name == "ARRAY" else values[0]
    return out


def test_the_sdist_is_pinned_and_checked(tmp_path):
    path = llamacpp_source.fetch_sdist(CACHE)
    assert path.name == llamacpp_source.SDIST.filename
    (tmp_path / "downloads").mkdir()
    bad = tmp_path / "downloads" / path.name
    bad.write_bytes(path.read_bytes()[:-1] + b"x")
    with pytest.raises(RuntimeError, match="sha256"):
        llamacpp_source.fetch_sdist(tmp_path)
    tree = llamacpp_source.source_tree(CACHE)
    assert tree.name == "llama.cpp" and (tree / "tools/mtmd/models/hunyuanvl.cpp").is_file()


def test_build_commands_are_portable_and_download_free():
    configure, build = llamacpp_source.build_commands("/src", "/build", jobs=4)
    assert configure[:5] == ["cmake", "-S", "/src", "-B", "/build"]
    flags = set(configure)
    assert {"-DGGML_NATIVE=OFF", "-DGGML_BACKEND_DL=ON", "-DGGML_CPU_ALL_VARIANTS=ON"} <= flags
    assert {"-DLLAMA_USE_PREBUILT_UI=OFF", "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_SERVER=ON"} <= flags
    assert {"-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF"} <= flags
    assert build == ["cmake", "--build", "/build", "--parallel", "4", "--target", "llama-server", "llama-quantize"]


def test_install_tree_copies_the_targets_and_their_libraries(tmp_path):
    built = tmp_path / "build" / "bin"
    built.mkdir(parents=True)
    for name in ("llama-server", "llama-quantize", "llama-cli", "libllama.so.0.0.1", "libggml-cpu-haswell.so"):
        (built / name).write_text(name)
    (built / "libllama.so.0").symlink_to("libllama.so.0.0.1")
    bin_dir = llamacpp_source.install_tree(tmp_path / "build", tmp_path / "opt")
    assert sorted(p.name for p in bin_dir.iterdir()) == [
        "libggml-cpu-haswell.so",
        "libllama.so.0",
        "libllama.so.0.0.1",
        "llama-quantize",
        "llama-server",
    ]
    assert (bin_dir / "libllama.so.0").is_symlink()


def test_conversion_of_the_real_layout_checkpoint(hunyuan_gguf, gguf_reader):
    text, mmproj = hunyuan_gguf / "hunyuanocr-q8_0.gguf", hunyuan_gguf / "mmproj-hunyuanocr-f16.gguf"
    assert sorted(p.name for p in hunyuan_gguf.iterdir()) == [text.name, mmproj.name]  # no partial files left
    reader = gguf_reader(text)
    meta = fields(reader)
    assert meta["general.architecture"] == "hunyuan_vl"
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "hunyuan-dense"
    tokens = meta["tokenizer.ggml.tokens"]
    assert len(tokens) == 120818 and tokens[120118] == "<｜hy_place▁holder▁no▁100｜>"
    assert meta["tokenizer.ggml.eos_token_id"] == 120020 and meta["tokenizer.ggml.bos_token_id"] == 120000
    assert meta["tokenizer.ggml.merges"]  # llama.cpp refuses a BPE vocabulary without merges
    assert "hy_User" in meta["tokenizer.chat_template"]
    assert meta["hunyuan_vl.rope.dimension_sections"][:4] == [4, 4, 4, 4]
    assert {t.tensor_type.name for t in reader.tensors if t.name.endswith("attn_q.weight")} == {"Q8_0"}
    projector = fields(gguf_reader(mmproj))
    assert projector["clip.projector_type"] == "hunyuanvl" and projector["clip.vision.block_count"] == 3
    assert projector["clip.vision.image_max_pixels"] == 2048 * 2048


def test_q4_k_m_through_llama_quantize(hunyuan_checkpoint, llama_bin, tmp_path, gguf_reader):
    with open(tmp_path / "convert.log", "w") as log:
        text, mmproj = gguf.convert(
            hunyuan_checkpoint, tmp_path / "out", "q4_k_m", CACHE, llama_bin / "llama-quantize", log=log
        )
    assert text.name == "hunyuanocr-q4_k_m.gguf" and mmproj.name == "mmproj-hunyuanocr-f16.gguf"
    assert not list((tmp_path / "out").glob("*f16.tmp*"))
    assert fields(gguf_reader(text))["general.file_type"] == 15  # LLAMA_FTYPE_MOSTLY_Q4_K_M


def test_unknown_quantization_is_refused(tmp_path):
    with pytest.raises(ValueError, match="q4_k_m"):
        gguf.convert(tmp_path, tmp_path / "out", "q3_k")
