"""The CPU model in the image: its settings, stages, the llama.cpp layer's key and build script, the model layer's
GGUF files (the real converter on the tiny real-layout checkpoint), the unit, and its preset."""

from __future__ import annotations

import json
import shutil

import pytest
from contexts import enabled_links, make_ctx

from appliance.model_dir import find_gguf
from appliance.servers import llamacpp as servers_llamacpp
from imagebuilder import app, cpu_model, gguf, layers, llamacpp, llamacpp_source, model, stages
from imagebuilder.context import BuildError, Layer
from imagebuilder.settings import REPO, SettingsError, resolve

UNIT = REPO / "rootfs" / app.UNIT_DIR / "appliance-llama.service"
WANTS = "etc/systemd/system/multi-user.target.wants/appliance-llama.service"


@pytest.fixture(scope="module")
def checkpoint(hunyuan_checkpoint, tmp_path_factory):
    """The tiny real-layout checkpoint with the licence files a build demands."""
    d = tmp_path_factory.mktemp("checkpoint") / "HunyuanOCR"
    shutil.copytree(hunyuan_checkpoint, d)
    (d / "LICENSE").write_text("TENCENT HUNYUAN COMMUNITY LICENSE AGREEMENT (test copy)\n")
    (d / "NOTICE").write_text("Notice: test copy\n")
    return d


def share_conversions(ctx) -> None:
    """The test build's cache shares the repository cache's sdist, llama.cpp tree and GGUF conversions (its
    layers stay its own)."""
    ctx.cache_dir.mkdir(parents=True, exist_ok=True)
    for name in ("downloads", "llama.cpp", "gguf"):
        (REPO / "cache" / name).mkdir(parents=True, exist_ok=True)
        (ctx.cache_dir / name).symlink_to(REPO / "cache" / name)


def shipped_by_build_model_layer(ctx, monkeypatch) -> dict[str, bytes]:
    """Run the model-check and model-layer stages; {path: bytes} of what mksquashfs would have packed."""
    share_conversions(ctx)
    shipped = {}

    def squash(ctx, layer, tree, meta, excludes=()):
        shipped.update({str(p.relative_to(tree)): p.read_bytes() for p in tree.rglob("*") if p.is_file()})
        layer.meta = {"size": 0}
        return layer

    monkeypatch.setattr(layers, "finish_layer", squash)
    model.check_model(ctx)
    model.build_model_layer(ctx)
    return shipped


# --- settings and stages ----------------------------------------------------------------------------------------


def test_cpu_model_settings():
    c = resolve("cpu")
    assert c.cpu_model is True and c.cpu_model_quant == "q8_0" and c.engine == "auto"
    assert resolve("gpu", ["cpu_model=off"]).cpu_model is False
    assert resolve("cpu", ["cpu_model_quant=q4_k_m"]).cpu_model_quant == "q4_k_m"
    with pytest.raises(SettingsError, match="cpu_model_quant.*f16, q8_0, q4_k_m"):
        resolve("cpu", ["cpu_model_quant=q2_k"])


def test_stages_of_a_cpu_image_with_and_without_the_model(tmp_path, checkpoint):
    def names(*overrides, model_dir=None):
        ctx = make_ctx(tmp_path / str(len(overrides)) / str(bool(model_dir)), "cpu", *overrides, model=model_dir)
        return [s.name for s in stages.STAGES if s.when(ctx)]

    plain = names()
    assert "model-check" not in plain and "llama.cpp-layer" not in plain and "model-layer" not in plain
    full = names(model_dir=str(checkpoint))
    assert full[0] == "model-check"  # licence and files before anything is built
    assert full.index("base-layer") < full.index("llama.cpp-layer") < full.index("python-layer")
    assert full.index("model-layer") < full.index("app-layer")
    assert "llama.cpp-layer" not in names("cpu_model=off", model_dir=str(checkpoint))


def test_cpu_profile_build_needs_the_licence(tmp_path, checkpoint):
    ctx = make_ctx(tmp_path, "cpu", model=str(checkpoint))
    with pytest.raises(BuildError, match="--accept-model-license"):
        model.check_model(ctx)


def test_unit_enabled_only_with_the_cpu_model(tmp_path, checkpoint):
    with_model = make_ctx(tmp_path / "m", "cpu", model=str(checkpoint), accept=True)
    assert enabled_links(with_model)[WANTS] == "/usr/lib/systemd/system/appliance-llama.service"
    assert WANTS not in enabled_links(make_ctx(tmp_path / "p", "cpu"))
    assert WANTS not in enabled_links(make_ctx(tmp_path / "o", "cpu", "cpu_model=off", model=str(checkpoint)))
    config = json.loads(app.generated(with_model)["etc/appliance/config.json"][0])
    assert config["model_dir"] == "/usr/share/appliance/model" and config["engine"] == "auto"


def test_llama_unit_runs_unprivileged_on_loopback_and_steps_aside_for_the_gpu():
    text = UNIT.read_text()
    for line in (
        "DynamicUser=yes",
        "ExecCondition=/usr/bin/python3 -m appliance.gpu cpu-serves",
        "ExecCondition=/usr/bin/python3 -m appliance.servers.ram",
        "ExecStart=/usr/local/bin/appliance llama-server",
        "ConditionPathExists=/opt/llama.cpp/bin/llama-server",
        "IPAddressAllow=localhost",
        "IPAddressDeny=any",
        "RuntimeDirectory=appliance-llama",
        "After=appliance-nvidia.service",
        "Restart=on-failure",
        "NoNewPrivileges=yes",
    ):
        assert line in text
    assert "After=appliance-llama.service" in (UNIT.parent / "appliance-web.service").read_text()
    assert str(servers_llamacpp.INSTALLED_BINARY) == f"/{llamacpp.PREFIX}/bin/llama-server"


# --- the llama.cpp layer ----------------------------------------------------------------------------------------


def test_layer_key_follows_its_inputs(tmp_path, monkeypatch):
    ctx = make_ctx(tmp_path, "cpu")
    key = llamacpp.layer_key(ctx, "base1", "sha1")
    assert key == llamacpp.layer_key(ctx, "base1", "sha1")
    assert key != llamacpp.layer_key(ctx, "base2", "sha1")  # suite, mirrors, packages
    assert key != llamacpp.layer_key(ctx, "base1", "sha2")  # another sdist
    assert key != llamacpp.layer_key(make_ctx(tmp_path / "s", "cpu", "suite=forky"), "base1", "sha1")
    monkeypatch.setattr(llamacpp, "IMAGE_FLAGS", (*llamacpp.IMAGE_FLAGS, "-DGGML_LTO=ON"))
    assert key != llamacpp.layer_key(ctx, "base1", "sha1")
    monkeypatch.undo()
    monkeypatch.setattr(llamacpp, "DROPPED_VARIANTS", ())  # the build script changes
    assert key != llamacpp.layer_key(ctx, "base1", "sha1")
    monkeypatch.undo()
    monkeypatch.setattr(llamacpp, "RECIPE", llamacpp.RECIPE + 1)
    assert key != llamacpp.layer_key(ctx, "base1", "sha1")
    monkeypatch.undo()
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1800000000")  # file times are in the layer's bytes
    assert key != llamacpp.layer_key(ctx, "base1", "sha1")


def test_build_script_is_the_portable_build_without_the_amx_variant():
    script = llamacpp.build_script(llamacpp.cmake_flags(), 2)
    for flag in ("-DGGML_NATIVE=OFF", "-DGGML_BACKEND_DL=ON", "-DGGML_CPU_ALL_VARIANTS=ON", "-DGGML_OPENMP=OFF"):
        assert flag in script
    assert "-DLLAMA_USE_PREBUILT_UI=OFF" in script and "-DLLAMA_OPENSSL=OFF" in script
    assert "sed -i '/ggml_add_cpu_backend_variant(sapphirerapids /d' ggml/src/CMakeLists.txt" in script
    assert "--target llama-server" in script and "llama-quantize" not in script
    # the sed matches the vendored line exactly once
    tree = llamacpp_source.source_tree(REPO / "cache")
    lines = (tree / "ggml/src/CMakeLists.txt").read_text().splitlines()
    assert sum("ggml_add_cpu_backend_variant(sapphirerapids " in line for line in lines) == 1


def test_backends_opened_are_read_off_the_loader():
    ld_debug = (
        "     16529:\tfile=/opt/llama.cpp/bin/libggml-cpu-x64.so [0];  dynamically loaded by "
        "/opt/llama.cpp/bin/libggml.so.0 [0]\n"
        "     16529:\tfile=/opt/llama.cpp/bin/libggml-cpu-haswell.so [0];  dynamically loaded by x [0]\n"
        "     16529:\tfile=libggml-base.so.0 [0];  needed by /opt/llama.cpp/bin/llama-server [0]\n"
    )
    assert llamacpp.opened_backends(ld_debug) == ["haswell", "x64"]
    assert llamacpp.opened_backends("Available devices:\n  (none)\n") == []


def test_amx_scan():
    assert llamacpp.has_amx("  4012a0:\tldtilecfg (%rax)\n")
    assert llamacpp.has_amx("tileloadd (%rsi,%rdx,1),%tmm0")
    assert not llamacpp.has_amx("vpdpbusd %zmm1,%zmm2,%zmm3\n  vfmadd231ps")


@pytest.mark.slow
def test_the_layer_builds_in_a_trixie_chroot_and_runs_on_the_base_alone():
    """The real stage on the real base layer (cache/layers/base-*), when that exists and the host can mount it:
    slow (tens of minutes on 2 cores) unless its layer is in the cache already. Set APPLIANCE_TEST_LLAMA_LAYER=1."""
    import os

    if os.environ.get("APPLIANCE_TEST_LLAMA_LAYER") != "1":
        pytest.skip("the chroot build takes tens of minutes: APPLIANCE_TEST_LLAMA_LAYER=1 runs it")
    from imagebuilder import context, rootfs

    ctx = context.make_context(resolve("cpu", cache_dir=str(REPO / "cache")))
    try:
        base = ctx.layer_dir() / f"base-{rootfs.base_key(ctx)}"
        if not (base / "meta.json").is_file():
            pytest.skip(f"no base layer in the cache ({base}): build an image first")
        meta = json.loads((base / "meta.json").read_text())
        ctx.layers.append(Layer("base", 0, meta["key"], base / "layer.squashfs", meta["epoch"], True, meta))
        summary = llamacpp.build_llamacpp_layer(ctx)
        layer = ctx.layers[-1]
        assert layer.name == "llama.cpp" and "sapphirerapids" not in layer.meta["variants"]
        assert {"x64", "haswell", "skylakex", "zen4"} <= set(layer.meta["variants"]), summary
        assert "llama-server" in layer.meta["files"] and layer.meta["size"] < 100 * 2**20
    finally:
        context.remove_tree(ctx.work)


# --- the model layer's GGUF files -------------------------------------------------------------------------------


def test_cpu_image_ships_gguf_and_the_small_files_not_the_weights(tmp_path, checkpoint, monkeypatch):
    ctx = make_ctx(tmp_path, "cpu", "model_version=1.5", model=str(checkpoint), accept=True)
    shipped = shipped_by_build_model_layer(ctx, monkeypatch)
    root = "usr/share/appliance/model"
    assert f"{root}/gguf/hunyuanocr-q8_0.gguf" in shipped and f"{root}/gguf/mmproj-hunyuanocr-f16.gguf" in shipped
    assert not any(p.endswith(".safetensors") for p in shipped) and f"{root}/config.json" in shipped
    assert shipped[f"{root}/gguf/hunyuanocr-q8_0.gguf"][:4] == b"GGUF"
    manifest = json.loads(shipped[f"{root}/appliance-model.json"])
    entries = {e["path"]: e for e in manifest["files"]}
    assert "converted at build time" in entries["gguf/hunyuanocr-q8_0.gguf"]["origin"]
    assert entries["gguf/hunyuanocr-q8_0.gguf"]["origin"].endswith("q8_0")
    assert manifest["gguf"]["quant"] == "q8_0" and ctx.info["model_identity"]["gguf"]["text"].endswith("q8_0.gguf")
    assert all(e["size"] < layers.ISO_FILE_LIMIT for e in manifest["files"])
    # the image's directory is one the runtime finds the GGUF pair in
    image_dir = tmp_path / "image-model"
    for path, data in shipped.items():
        if path.startswith(root):
            (image_dir / path[len(root) + 1 :]).parent.mkdir(parents=True, exist_ok=True)
            (image_dir / path[len(root) + 1 :]).write_bytes(data)
    assert [p.name for p in find_gguf(image_dir)] == ["hunyuanocr-q8_0.gguf", "mmproj-hunyuanocr-f16.gguf"]


def test_conversion_is_cached_by_the_checkpoint_and_quant(tmp_path, checkpoint, monkeypatch):
    prepared = model.prepare_model(checkpoint, "1.5", accepted=True)
    cache = REPO / "cache"
    first = cpu_model.convert_cached(cache, checkpoint, prepared.manifest, "q8_0")  # made or reused
    monkeypatch.setattr(gguf, "convert", lambda *a, **k: pytest.fail("converted again"))
    assert cpu_model.convert_cached(cache, checkpoint, prepared.manifest, "q8_0") == first
    other = cpu_model.converted_key({**prepared.manifest, "files_sha256": "0" * 64}, "q8_0")
    assert other != cpu_model.converted_key(prepared.manifest, "q8_0")
    assert cpu_model.converted_key(prepared.manifest, "f16") != cpu_model.converted_key(prepared.manifest, "q8_0")


def test_gpu_image_ships_the_weights_and_the_gguf_files(tmp_path, checkpoint, monkeypatch):
    ctx = make_ctx(tmp_path, "gpu", "model_version=1.5", model=str(checkpoint), accept=True)
    shipped = shipped_by_build_model_layer(ctx, monkeypatch)
    assert any(p.endswith(".safetensors") for p in shipped)
    assert "usr/share/appliance/model/gguf/hunyuanocr-q8_0.gguf" in shipped
    off = make_ctx(tmp_path / "off", "gpu", "model_version=1.5", "cpu_model=off", model=str(checkpoint), accept=True)
    shipped = shipped_by_build_model_layer(off, monkeypatch)
    assert not any(p.endswith(".gguf") for p in shipped) and any(p.endswith(".safetensors") for p in shipped)


def test_a_directory_with_its_own_gguf_files_is_used_as_it_is(tmp_path, checkpoint, monkeypatch):
    own = tmp_path / "HunyuanOCR"
    shutil.copytree(checkpoint, own)
    (own / "gguf").mkdir()
    (own / "gguf" / "hunyuanocr-q4_k_m.gguf").write_bytes(b"GGUF text")
    (own / "gguf" / "mmproj-hunyuanocr-f16.gguf").write_bytes(b"GGUF vision")
    monkeypatch.setattr(gguf, "convert", lambda *a, **k: pytest.fail("a directory's own GGUF files are converted"))
    ctx = make_ctx(tmp_path / "b", "cpu", "model_version=1.5", model=str(own), accept=True)
    shipped = shipped_by_build_model_layer(ctx, monkeypatch)
    assert shipped["usr/share/appliance/model/gguf/hunyuanocr-q4_k_m.gguf"] == b"GGUF text"
    manifest = json.loads(shipped["usr/share/appliance/model/appliance-model.json"])
    entry = next(e for e in manifest["files"] if e["path"] == "gguf/hunyuanocr-q4_k_m.gguf")
    assert "used as it is" in entry["origin"] and len(entry["sha256"]) == 64
    (own / "gguf" / "hunyuanocr-f16.gguf").write_bytes(b"GGUF second text model")
    with pytest.raises(BuildError, match="one HunyuanOCR text model"):
        cpu_model.own_gguf(own)


def test_manifest_of_a_cpu_image_names_the_model_and_the_llama_build(tmp_path):
    from imagebuilder import manifest

    ctx = make_ctx(tmp_path, "cpu", model="/models/x")
    ctx.work.mkdir()
    ctx.files["iso"] = ctx.work / "x.iso"
    ctx.files["iso"].write_bytes(b"iso")
    ctx.info["model_identity"] = {"model_id": "tencent/HunyuanOCR", "gguf": {"quant": "q8_0", "origin": "converted"}}
    ctx.info["llamacpp"] = {"sdist": {"sha256": llamacpp_source.SDIST.sha256}, "variants": ["x64", "haswell"]}
    manifest.write_manifest(ctx)
    data = json.loads(ctx.files["manifest"].read_text())
    assert data["model"]["gguf"]["quant"] == "q8_0" and "gpu_stack" not in data
    assert data["llamacpp"]["variants"] == ["x64", "haswell"]
    assert data["settings"]["cpu_model"] is True and data["settings"]["cpu_model_quant"] == "q8_0"
