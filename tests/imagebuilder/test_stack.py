"""The GPU stack resolver: both shipped locks resolve; every incompatible combination names its piece and the fix."""

import pytest
import yaml

from imagebuilder import stack
from imagebuilder.stack import StackError, resolve_stack


def deb_dir(tmp_path, version="580.95.05", packages=("nvidia-kernel-dkms", "nvidia-kernel-open-dkms")):
    d = tmp_path / f"debs-{version}"
    d.mkdir()
    for package in packages:
        (d / f"{package}_{version}-1_amd64.deb").write_bytes(b"")
    (d / f"nvidia-driver_{version}-1_amd64.deb").write_bytes(b"")
    return d


def run_file(tmp_path, version="580.95.05"):
    f = tmp_path / f"NVIDIA-Linux-x86_64-{version}.run"
    f.write_bytes(b"#!/bin/sh\n")
    return f


def error(**kw) -> StackError:
    with pytest.raises(StackError) as e:
        resolve_stack(**kw)
    return e.value


# --- the two locks ---


def test_cuda12_lock_resolves_on_debian_driver():
    s = resolve_stack(driver_source="debian", lock="cuda12-debian-driver")
    assert (s.name, s.cuda, s.vllm, s.torch, s.transformers) == (
        "cuda12-debian-driver",
        "12.8",
        "0.18.1",
        "2.10.0",
        "4.57.6",
    )
    assert s.driver.version == "550.163.01" and s.driver.flavours == ("proprietary",)
    assert s.engines == ("hunyuan-vllm",)  # transformers < 5: no in-process engine in this venv
    assert s.hunyuan_vl == "native"
    assert s.blackwell is False
    assert any("hunyuan-transformers is not offered" in w for w in s.warnings)
    assert any("Blackwell" in w and "CPU fallback" in w for w in s.warnings)
    assert s.requirements() == ["vllm==0.18.1", "torch==2.10.0", "transformers==4.57.6"]
    assert len(s.wheel_sha256) == 2


def test_default_is_the_cuda12_lock():
    assert resolve_stack().name == "cuda12-debian-driver"


def test_cuda13_lock_resolves_with_user_debs(tmp_path):
    s = resolve_stack(driver_source=str(deb_dir(tmp_path)), lock="cuda13-user-driver")
    assert (s.cuda, s.vllm, s.torch, s.transformers) == ("13.0", "0.26.0", "2.11.0", "5.23.0")
    assert s.driver.source == "deb-dir" and s.driver.version == "580.95.05"
    assert s.driver.flavours == ("open", "proprietary")
    assert s.engines == ("hunyuan-vllm", "hunyuan-transformers")
    assert s.blackwell is True and s.warnings == []
    assert s.as_dict()["driver"]["version"] == "580.95.05"


def test_cuda13_lock_resolves_with_run_installer(tmp_path):
    s = resolve_stack(
        driver_source=str(run_file(tmp_path, "590.44.01")), lock="cuda13-user-driver", need_blackwell=True
    )
    assert s.driver.source == "run" and s.driver.version == "590.44.01"
    assert s.driver.flavours == ("open", "proprietary")


def test_cuda12_lock_also_runs_on_a_newer_user_driver(tmp_path):
    s = resolve_stack(driver_source=str(deb_dir(tmp_path)), lock="cuda12-debian-driver")
    assert s.cuda == "12.8" and s.blackwell is True


def test_locks_match_the_table():
    """The vLLM named in messages and each lock's pins agree with VLLM (a lock edit without the table fails here)."""
    for name, version in stack.VLLM_BY_LOCK.items():
        lock = stack.load_lock(name)
        assert lock["packages"]["vllm"] == version
        assert stack.VLLM[version].torch == lock["packages"]["torch"]


# --- driver vs CUDA ---


def test_cuda13_torch_on_debian_driver():
    e = error(driver_source="debian", lock="cuda13-user-driver")
    assert e.piece == "driver"
    assert str(e) == (
        "torch 2.11.0 needs CUDA 13, which needs NVIDIA driver >= 580; Debian's archive has "
        "550.163.01. Use the cuda12-debian-driver lock, or give a driver >= 580 with "
        "--set nvidia_driver_source=DIR."
    )


def test_cuda13_torch_on_old_user_driver(tmp_path):
    e = error(driver_source=str(deb_dir(tmp_path, "570.172.08")), lock="cuda13-user-driver")
    assert e.piece == "driver"
    assert "needs NVIDIA driver >= 580" in str(e) and "is 570.172.08" in str(e)
    assert "Give a driver >= 580, or use the cuda12-debian-driver lock" in str(e)


def test_cuda12_torch_on_a_driver_below_525(tmp_path):
    e = error(driver_source=str(run_file(tmp_path, "470.256.02")), lock="cuda12-debian-driver")
    assert e.piece == "driver" and "needs CUDA 12, which needs NVIDIA driver >= 525" in str(e)


def test_explicit_newest_torch_on_debian_driver():
    e = error(vllm="0.33.0", torch="2.14.0", transformers="5.20.0")
    assert e.piece == "driver" and "torch 2.14.0 needs CUDA 13" in str(e)


# --- driver sources ---


def test_debian_has_only_550():
    e = error(driver_source="debian", driver_version="580.95.05")
    assert e.piece == "driver"
    assert "not in Debian's archive (it has 550.163.01 only)" in str(e) and "nvidia_driver_source" in str(e)


def test_missing_driver_source(tmp_path):
    e = error(driver_source=str(tmp_path / "nowhere"))
    assert e.piece == "driver" and "does not exist" in str(e)


def test_driver_dir_without_module_packages(tmp_path):
    d = tmp_path / "empty"
    d.mkdir()
    (d / "libcuda1_580.95.05-1_amd64.deb").write_bytes(b"")
    e = error(driver_source=str(d))
    assert e.piece == "driver" and "holds no NVIDIA kernel module package" in str(e)


def test_driver_dir_with_two_versions(tmp_path):
    d = deb_dir(tmp_path, "580.95.05", ("nvidia-kernel-dkms",))
    (d / "nvidia-kernel-open-dkms_590.44.01-1_amd64.deb").write_bytes(b"")
    e = error(driver_source=str(d))
    assert "mixes NVIDIA driver versions 580.95.05, 590.44.01" in str(e)


def test_driver_version_disagrees_with_source(tmp_path):
    e = error(driver_source=str(run_file(tmp_path, "580.95.05")), driver_version="590.44.01")
    assert "nvidia_driver_version is 590.44.01 but the installer" in str(e) and "580.95.05" in str(e)


def test_file_that_is_not_an_installer(tmp_path):
    f = tmp_path / "driver.zip"
    f.write_bytes(b"")
    e = error(driver_source=str(f))
    assert "is not NVIDIA's installer" in str(e)


# --- vLLM, torch, transformers ---


def test_vllm_without_hunyuan_support():
    e = error(vllm="0.11.2", torch="2.8.0", transformers="4.56.0")
    assert e.piece == "vllm" and "predates HunYuanVL support (native from 0.12.0)" in str(e)
    assert "cuda12-debian-driver lock (vLLM 0.18.1)" in str(e)


def test_vllm_not_in_table():
    e = error(vllm="0.19.0", torch="2.10.0", transformers="4.57.6")
    assert e.piece == "vllm" and "vLLM 0.19.0 is not in the checked table" in str(e)


def test_torch_not_vllms_pin():
    e = error(lock="cuda12-debian-driver", torch="2.11.0")
    assert e.piece == "torch"
    assert "vLLM 0.18.1 pins torch==2.10.0, not torch 2.11.0" in str(e)
    assert "a vLLM that pins torch 2.11.0 (0.24.0, 0.26.0)" in str(e)


def test_torch_too_old_for_table():
    with pytest.raises(StackError, match="torch 2.8.0 is outside the checked range"):
        stack.torch_cuda("2.8.0")


def test_transformers_5_with_vllm_0_18_explains_the_engine_split():
    e = error(lock="cuda12-debian-driver", transformers="5.23.0")
    assert e.piece == "transformers"
    assert "vLLM 0.18.1 requires transformers >=4.56.0,<5, not 5.23.0" in str(e)
    assert "cannot share a venv with vLLM 0.18.1: this stack offers the vLLM engine only" in str(e)


def test_transformers_below_vllms_floor(tmp_path):
    e = error(driver_source=str(deb_dir(tmp_path)), lock="cuda13-user-driver", transformers="5.4.0")
    assert e.piece == "transformers" and "requires transformers >=5.5.3, not 5.4.0" in str(e)


def test_transformers_backend_needs_hunyuan_vl(tmp_path):
    e = error(driver_source=str(deb_dir(tmp_path)), vllm="0.29.0", torch="2.13.0", transformers="5.12.1")
    assert e.piece == "transformers"
    assert "Transformers backend, which needs transformers >= 5.13 (the first with hunyuan_vl)" in str(e)


def test_vllm_029_with_hunyuan_transformers_resolves(tmp_path):
    s = resolve_stack(driver_source=str(deb_dir(tmp_path)), vllm="0.29.0", torch="2.13.0", transformers="5.13.0")
    assert s.name == "custom" and s.hunyuan_vl == "transformers-backend" and s.cuda == "13.0"


def test_missing_pin_without_lock():
    e = error(vllm="0.18.1")
    assert e.piece == "lock" and "no version for torch, transformers" in str(e)


def test_overrides_are_named(tmp_path):
    s = resolve_stack(driver_source=str(deb_dir(tmp_path)), lock="cuda13-user-driver", transformers="5.13.0")
    assert s.name == "cuda13-user-driver+overrides" and s.wheel_sha256 == {}


def test_unknown_lock():
    e = error(lock="cuda14")
    assert e.piece == "lock" and "known locks: cuda12-debian-driver, cuda13-user-driver" in str(e)


def test_python_too_new_for_vllm():
    e = error(lock="cuda12-debian-driver", python_version="3.14")
    assert e.piece == "python" and "vLLM 0.18.1 supports Python < 3.14" in str(e)


# --- Blackwell ---


def test_blackwell_required_on_debian_driver():
    e = error(lock="cuda12-debian-driver", need_blackwell=True)
    assert e.piece == "driver"
    assert "Blackwell GPUs (RTX 50xx, B200) need NVIDIA driver >= 570 with the open kernel modules" in str(e)


def test_blackwell_required_without_open_modules(tmp_path):
    d = deb_dir(tmp_path, "580.95.05", ("nvidia-kernel-dkms",))
    e = error(driver_source=str(d), lock="cuda13-user-driver", need_blackwell=True)
    assert "need the open kernel modules, and the driver source has only proprietary ones" in str(e)


def test_stale_lock_claims_are_caught(tmp_path):
    lock = yaml.safe_load((stack.LOCKS_DIR / "cuda12-debian-driver.yaml").read_text())
    lock["cuda"] = "13.0"
    (tmp_path / "cuda12-debian-driver.yaml").write_text(yaml.safe_dump(lock))
    e = error(lock="cuda12-debian-driver", locks_dir=tmp_path)
    assert e.piece == "lock" and "says cuda 13.0 but torch 2.10.0 is built for CUDA 12.8" in str(e)


def test_version_tuple():
    assert stack.version_tuple("2.10.0+cu128") == (2, 10)
    assert stack.version_tuple("2.10") == stack.version_tuple("2.10.0")
    assert stack.version_tuple("580.95.05") > stack.version_tuple("580.9")
