"""The settings table: profile validation, --set overrides, type conversion, the dump."""

import ast

import pytest

from imagebuilder import settings
from imagebuilder.settings import REPO, SETTINGS, SettingsError, resolve


def write(tmp_path, text, name="site.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_cpu_profile_resolves_with_defaults():
    c = resolve("cpu")
    assert c.profile == "cpu"
    assert c.suite == "trixie"
    assert c.lan is False
    assert "base" in c.package_lists
    assert c.source("suite") == "default"
    assert c.source("package_lists").endswith("cpu.yaml")


def test_every_profile_in_repo_is_valid():
    for p in settings.PROFILES_DIR.glob("*.yaml"):
        resolve(p.stem)


def test_unknown_key_names_key_and_file(tmp_path):
    path = write(tmp_path, "lanz: on\n")
    with pytest.raises(SettingsError) as e:
        resolve(path)
    msg = str(e.value)
    assert "lanz" in msg and path in msg and "did you mean 'lan'" in msg


def test_mistyped_value_names_key_and_file(tmp_path):
    path = write(tmp_path, "boot_timeout: soon\n")
    with pytest.raises(SettingsError, match=rf"{path}: boot_timeout: expected an integer"):
        resolve(path)


def test_bad_choice(tmp_path):
    with pytest.raises(SettingsError, match="default_task: expected one of"):
        resolve(write(tmp_path, "default_task: poetry\n"))


def test_host_only_key_refused_in_profile(tmp_path):
    with pytest.raises(SettingsError, match="unknown setting 'out_dir'"):
        resolve(write(tmp_path, "out_dir: /tmp/x\n"))


def test_set_overrides_convert_types():
    c = resolve("cpu", ["lan=on", "lan_token=SECRET123", "outputs=txt,md", "boot_timeout=2", "language=zh"])
    assert c.lan is True and c.lan_token == "SECRET123"
    assert c.outputs == ["txt", "md"]
    assert c.boot_timeout == 2
    assert c.source("lan") == "--set"


def test_set_unknown_and_malformed():
    with pytest.raises(SettingsError, match="--set: unknown setting 'lang'"):
        resolve("cpu", ["lang=zh"])
    with pytest.raises(SettingsError, match="expected KEY=VALUE"):
        resolve("cpu", ["lan"])
    with pytest.raises(SettingsError, match="--set: lan: expected on/off"):
        resolve("cpu", ["lan=maybe"])


def test_lan_needs_token():
    with pytest.raises(SettingsError, match="lan_token"):
        resolve("cpu", ["lan=on"])


def test_outputs_validated():
    with pytest.raises(SettingsError, match="outputs: unknown format"):
        resolve("cpu", ["outputs=txt,docx"])


def test_secret_masked_in_dump_and_dict_but_not_in_image_config():
    c = resolve("cpu", ["lan=on", "lan_token=SECRET123"])
    assert "SECRET123" not in c.dump()
    assert c.as_dict()["lan_token"] == "***"
    assert "lan_token" not in c.image_config()
    assert c.image_config()["lan"] is True


def test_extends(tmp_path):
    write(tmp_path, "language: zh\nboot_timeout: 1\n", "parent.yaml")
    child = write(tmp_path, "extends: parent.yaml\nboot_timeout: 9\n", "child.yaml")
    c = resolve(child)
    assert c.language == "zh" and c.boot_timeout == 9


def test_missing_profile_lists_known():
    with pytest.raises(SettingsError, match="known profiles: .*cpu"):
        resolve("nope")


def test_flags_override_profile():
    c = resolve("cpu", out_dir="/tmp/o", cache_dir=None)
    assert c.out_dir == "/tmp/o" and c.cache_dir == "cache"


def test_every_build_setting_is_read_by_the_builder():
    """A row nothing reads is a setting that does nothing. Build settings are read off the build's Config
    (`config.x`, `c.x`, `ctx.config.x`, `getattr(config, "x")`); image settings through appliance.runtime, whose own
    test checks each one changes what the app does (tests/test_runtime.py)."""

    def is_config(node):
        return (isinstance(node, ast.Name) and node.id in ("config", "c")) or (
            isinstance(node, ast.Attribute) and node.attr == "config"
        )

    reads = set()
    for path in (REPO / "imagebuilder").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and is_config(node.value):
                reads.add(node.attr)
            elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "getattr" and len(node.args) > 1:
                if is_config(node.args[0]) and isinstance(node.args[1], ast.Constant):
                    reads.add(node.args[1].value)
    assert [s.name for s in SETTINGS if not s.image and s.name not in reads] == []
