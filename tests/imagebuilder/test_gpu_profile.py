"""The gpu profile's wiring: profile, stage order (stack and model checks before anything else), units, generated
files, manifest; fast, no root, no network, no GPU."""

import json

import pytest
from contexts import enabled_links, make_ctx

from imagebuilder import app, boot, layers, manifest, model, nvidia, stages
from imagebuilder.context import BuildError
from imagebuilder.settings import REPO, resolve
from imagebuilder.stack import resolve_stack

UNITS = REPO / "rootfs" / app.UNIT_DIR
GPU_STAGES = {"gpu-stack", "model-check", "nvidia-layer", "model-layer"}


def ctx_for(tmp_path, profile="gpu", *overrides, model=None, accept=None):
    return make_ctx(tmp_path, profile, *overrides, model=model, accept=accept)


def recording(ctx):
    """STAGES with every stage but the two checks replaced by a recorder: what ran, in order."""
    ran = []

    def record(name):
        return lambda ctx: ran.append(name)

    staged = [
        s if s.name in ("gpu-stack", "model-check") else stages.Stage(s.name, record(s.name), s.when)
        for s in stages.STAGES
    ]
    return staged, ran


@pytest.fixture
def model_dir(tmp_path):
    d = tmp_path / "model"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "hunyuan_vl"}))
    (d / "model.safetensors").write_bytes(b"\0" * 64)
    (d / "tokenizer_config.json").write_text("{}")
    (d / "tokenizer.json").write_text("{}")
    (d / "preprocessor_config.json").write_text("{}")
    (d / "LICENSE").write_text("TENCENT HUNYUAN COMMUNITY LICENSE AGREEMENT (test copy)\n")
    (d / "NOTICE").write_text("Notice: test copy\n")
    return d


def test_gpu_profile_extends_cpu():
    cpu, gpu = resolve("cpu"), resolve("gpu")
    assert gpu.gpu_stack == "cuda12-debian-driver" and gpu.engine == "auto"
    assert gpu.package_lists == cpu.package_lists and gpu.python_extras == cpu.python_extras
    assert gpu.source("package_lists").endswith("cpu.yaml") and gpu.source("gpu_stack").endswith("gpu.yaml")
    assert cpu.gpu_stack == "" and resolve("cpu", ["nvidia_driver_version=550.163.01"]).nvidia_driver_version


def test_stage_lists_for_gpu_and_cpu(tmp_path):
    def names(ctx):
        return [s.name for s in stages.STAGES if s.when(ctx)]

    cpu, gpu = names(ctx_for(tmp_path / "c", "cpu")), names(ctx_for(tmp_path / "g"))
    assert not GPU_STAGES & set(cpu)
    assert gpu[:3] == ["gpu-stack", "model-check", "check-host"]
    assert (
        gpu.index("base-layer")
        < gpu.index("nvidia-layer")
        < gpu.index("python-layer")
        < gpu.index("model-layer")
        < gpu.index("app-layer")
    )
    assert [n for n in gpu if n not in GPU_STAGES] == cpu


def test_incompatible_stack_stops_before_any_download(tmp_path, model_dir):
    ctx = ctx_for(tmp_path, "gpu", "torch_version=2.11.0", model=str(model_dir), accept=True)
    staged, ran = recording(ctx)
    with pytest.raises(BuildError) as e:
        stages.run_stages(ctx, staged, log=lambda *a, **k: None)
    assert "stage 'gpu-stack' failed" in str(e.value) and "torch" in str(e.value) and "2.10.0" in str(e.value)
    assert ran == []


def test_cuda13_lock_on_debian_driver_names_the_driver(tmp_path, model_dir):
    ctx = ctx_for(tmp_path, "gpu", "gpu_stack=cuda13-user-driver", model=str(model_dir), accept=True)
    staged, ran = recording(ctx)
    with pytest.raises(BuildError, match=r"driver: .*>= 580.*nvidia_driver_source"):
        stages.run_stages(ctx, staged, log=lambda *a, **k: None)
    assert ran == []


def test_model_checked_before_anything_is_built(tmp_path, model_dir):
    ctx = ctx_for(tmp_path, "gpu", "model_version=1.5", model=str(model_dir))  # licence not accepted
    staged, ran = recording(ctx)
    with pytest.raises(BuildError, match="--accept-model-license"):
        stages.run_stages(ctx, staged, log=lambda *a, **k: None)
    assert ran == [] and ctx.info["stack"].vllm == "0.18.1"

    ctx = ctx_for(tmp_path / "2", "gpu", model=None, accept=True)
    staged, ran = recording(ctx)
    with pytest.raises(BuildError, match="--model DIR"):
        stages.run_stages(ctx, staged, log=lambda *a, **k: None)
    assert ran == []


def test_good_gpu_build_runs_every_stage_in_order(tmp_path, model_dir):
    ctx = ctx_for(tmp_path, "gpu", "model_version=1.5", model=str(model_dir), accept=True)
    staged, ran = recording(ctx)
    stages.run_stages(ctx, staged, log=lambda *a, **k: None)
    assert ran[:3] == ["check-host", "base-layer", "nvidia-layer"] and "model-layer" in ran
    assert ctx.info["model"].manifest["version"] == "1.5"


def test_compile_cache_checked_with_the_model_and_shipped_in_its_layer(tmp_path, model_dir, monkeypatch):
    cache = tmp_path / "compile-cache"
    (cache / "sm_89" / "torch_compile_cache").mkdir(parents=True)
    (cache / "sm_89" / "torch_compile_cache" / "graph.py").write_text("compiled")
    (cache / "notes.txt").write_text("not an architecture")
    ctx = ctx_for(
        tmp_path / "bad", "gpu", "model_version=1.5", f"vllm_compile_cache={cache}", model=str(model_dir), accept=True
    )
    staged, ran = recording(ctx)
    with pytest.raises(BuildError, match=r"sm_<compute capability>.*found notes.txt"):
        stages.run_stages(ctx, staged, log=lambda *a, **k: None)
    assert ran == []  # refused before anything is built

    (cache / "notes.txt").unlink()
    ctx = ctx_for(
        tmp_path / "good",
        "gpu",
        "model_version=1.5",
        f"vllm_compile_cache={cache}",
        "cpu_model=off",  # a stand-in checkpoint: no GGUF conversion (tests/imagebuilder/test_cpu_model.py does it)
        model=str(model_dir),
        accept=True,
    )
    model.check_model(ctx)
    shipped = {}

    def squash(ctx, layer, tree, meta, excludes=()):  # what mksquashfs would pack
        shipped.update({str(p.relative_to(tree)): p.read_bytes() for p in tree.rglob("*") if p.is_file()})
        layer.meta = {"size": 0}
        return layer

    monkeypatch.setattr(layers, "finish_layer", squash)
    model.build_model_layer(ctx)
    assert shipped["usr/share/appliance/vllm-compile-cache/sm_89/torch_compile_cache/graph.py"] == b"compiled"
    assert ctx.info["model_identity"]["vllm_compile_cache"] == ["sm_89"]  # recorded in manifest.json


def gpu_ctx_with_stack(tmp_path):
    ctx = ctx_for(tmp_path, model="/models/x")
    ctx.info["stack"] = resolve_stack()
    ctx.info["nvidia"] = {
        "kernel": "6.12.117+deb13-amd64",
        "flavours": ["proprietary"],
        "signed": False,
        "modules": {"proprietary": ["nvidia-current.ko.xz"]},
    }
    return ctx


def test_app_layer_of_a_gpu_image(tmp_path):
    ctx, cpu = gpu_ctx_with_stack(tmp_path / "g"), ctx_for(tmp_path / "c", "cpu")
    links, cpu_links = enabled_links(ctx), enabled_links(cpu)
    for unit in ("appliance-nvidia.service", "appliance-vllm.service"):
        assert links[f"etc/systemd/system/multi-user.target.wants/{unit}"] == f"/usr/lib/systemd/system/{unit}"
        assert not any(unit in link for link in cpu_links)
    files = app.generated(ctx)
    info = json.loads(files["etc/appliance/gpu-stack.json"][0])
    assert info["driver"]["flavours"] == ["proprietary"] and info["modules_signed"] is False
    assert info["vllm"] == "0.18.1" and info["engines"] == ["hunyuan-vllm"]
    assert json.loads(files["etc/appliance/config.json"][0])["model_dir"] == "/usr/share/appliance/model"
    assert "etc/appliance/gpu-stack.json" not in app.generated(cpu)
    assert "model_dir" not in json.loads(app.generated(cpu)["etc/appliance/config.json"][0])


def test_nouveau_blacklisted_on_the_gpu_image_only(tmp_path):
    assert "modprobe.blacklist=nouveau" in boot.grub_cfg(gpu_ctx_with_stack(tmp_path / "g"))
    assert "nouveau" not in boot.grub_cfg(ctx_for(tmp_path / "c", "cpu"))
    assert "blacklist nouveau" in nvidia.MODPROBE_TEXT


def test_dkms_packages_per_driver_source(tmp_path):
    assert nvidia.dkms_packages(resolve_stack().driver) == {"proprietary": "nvidia-kernel-dkms"}
    debs = tmp_path / "debs"
    debs.mkdir()
    for name in (
        "nvidia-kernel-open-dkms_580.95.05-1_amd64.deb",
        "nvidia-kernel-dkms_580.95.05-1_amd64.deb",
        "libcuda1_580.95.05-1_amd64.deb",
    ):
        (debs / name).write_bytes(b"")
    stack = resolve_stack(str(debs), lock="cuda13-user-driver")
    assert nvidia.dkms_packages(stack.driver) == {
        "open": "nvidia-kernel-open-dkms",
        "proprietary": "nvidia-kernel-dkms",
    }


def test_sign_key_directory_must_hold_key_and_certificate(tmp_path):
    keys = tmp_path / "mok"
    keys.mkdir()
    (keys / "mok.key").write_text("key")
    ctx = ctx_for(tmp_path, "gpu", f"nvidia_sign_key={keys}")
    with pytest.raises(BuildError, match="mok.pub"):
        nvidia.sign_key_files(ctx)
    (keys / "mok.pub").write_bytes(b"cert")
    assert nvidia.sign_key_files(ctx) == (keys / "mok.key", keys / "mok.pub")


def test_pack_keeps_each_group_under_the_budget():
    groups = layers.pack([("a", 5), ("b", 4), ("c", 3), ("d", 2), ("e", 9)], budget=9)
    assert sorted(sum({"a": 5, "b": 4, "c": 3, "d": 2, "e": 9}[i] for i in g) <= 9 for g in groups)
    assert sorted(i for g in groups for i in g) == ["a", "b", "c", "d", "e"]
    assert layers.pack([("small", 1), ("x", 2)], budget=100) == [["small", "x"]]
    assert layers.pack([], budget=1) == [[]]


def test_manifest_records_the_stack_and_model(tmp_path):
    ctx = gpu_ctx_with_stack(tmp_path)
    ctx.work.mkdir()
    iso = ctx.work / "x.iso"
    iso.write_bytes(b"iso")
    ctx.files["iso"] = iso
    ctx.info["model_files"] = [{"path": "model.safetensors", "size": 64, "sha256": "ab" * 32}]
    ctx.info["model_identity"] = {"model_id": "tencent/HunyuanOCR", "version": "1.5", "revision": "r"}
    manifest.write_manifest(ctx)
    data = json.loads(ctx.files["manifest"].read_text())
    assert data["gpu_stack"]["vllm"] == "0.18.1" and data["gpu_stack"]["torch"] == "2.10.0"
    assert data["gpu_stack"]["cuda"] == "12.8" and data["gpu_stack"]["nvidia_modules"]["flavours"] == ["proprietary"]
    assert data["model"]["version"] == "1.5" and data["model_files"][0]["sha256"] == "ab" * 32


# --- units ------------------------------------------------------------------------------------------------------


def unit(name: str) -> str:
    return (UNITS / name).read_text()


def test_vllm_unit_is_skipped_cleanly_without_a_gpu_and_backs_off():
    text = unit("appliance-vllm.service")
    assert "ExecCondition=/usr/bin/python3 -m appliance.gpu can-serve" in text  # exit 1 = skipped, never failed
    assert "ExecStart=/usr/local/bin/appliance vllm-server --auto" in text
    for line in (
        "Restart=on-failure",
        "RestartSteps=5",
        "RestartMaxDelaySec=120",
        "StartLimitIntervalSec=0",
        "User=ocr",
        "After=appliance-nvidia.service",
        "ConditionPathExists=/etc/appliance/gpu-stack.json",
    ):
        assert line in text
    assert "HF_HUB_OFFLINE=1" in text and "VLLM_NO_USAGE_STATS=1" in text


def test_nvidia_unit_chooses_the_flavour_at_boot():
    text = unit("appliance-nvidia.service")
    assert "ExecCondition=/usr/bin/python3 -m appliance.gpu flavour" in text
    assert "ConditionPathExists=/usr/lib/appliance/nvidia" in text and "Type=oneshot" in text
    script = (REPO / "rootfs/usr/local/lib/appliance/nvidia-load").read_text()
    assert "python3 -m appliance.gpu flavour" in script and "depmod" in script and "nvidia-current" in script
    assert nvidia.MODULE_DIR in script


def test_web_unit_waits_for_the_model_server_and_uses_auto():
    assert "After=appliance-vllm.service" in unit("appliance-web.service")
    assert resolve("gpu").engine == "auto"


def test_flat_repo_indexes_the_users_debs(tmp_path):
    import shutil
    import subprocess

    if not shutil.which("dpkg-deb"):
        pytest.skip("dpkg-deb is not installed")
    pkg = tmp_path / "pkg"
    (pkg / "DEBIAN").mkdir(parents=True)
    (pkg / "DEBIAN" / "control").write_text(
        "Package: nvidia-kernel-open-dkms\nVersion: 580.95.05-1\n"
        "Architecture: amd64\nMaintainer: t <t@t>\nDescription: test\n"
    )
    debs = tmp_path / "debs"
    debs.mkdir()
    deb = debs / "nvidia-kernel-open-dkms_580.95.05-1_amd64.deb"
    subprocess.run(["dpkg-deb", "--build", "--root-owner-group", str(pkg), str(deb)], check=True, capture_output=True)
    repo = tmp_path / "repo"
    nvidia.flat_repo(debs, repo)
    index = (repo / "Packages").read_text()
    assert "Package: nvidia-kernel-open-dkms\n" in index and f"Filename: ./{deb.name}\n" in index
    assert "SHA256: " in index and (repo / deb.name).is_file()
