"""The gpu profile's model step on a tiny real HunYuanVL directory laid out like the hub repo (1.5 root, v1.0/)."""

import json
import shutil

import pytest

from appliance.model_dir import model_info, model_version
from imagebuilder import model
from imagebuilder.model import ModelError

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def snapshot(tmp_path, tiny_model_dir):
    """models--tencent--HunyuanOCR/snapshots/<commit>/ with the tiny model at the root (1.5) and in v1.0/."""
    root = tmp_path / "hub" / "models--tencent--HunyuanOCR" / "snapshots" / COMMIT
    shutil.copytree(tiny_model_dir, root)
    shutil.copytree(tiny_model_dir, root / "v1.0")
    (root / "v1.0" / "extra-1.0-only.txt").write_text("only in 1.0\n")
    (root / "LICENSE").write_text("TENCENT HUNYUAN COMMUNITY LICENSE AGREEMENT (test copy)\n")
    (root / "Notice.txt").write_text("Notice: test copy\n")
    return root


@pytest.fixture
def plain_dir(tmp_path, tiny_model_dir):
    """A plain copy (not the hub cache): no commit to find."""
    d = tmp_path / "HunyuanOCR-1.5"
    shutil.copytree(tiny_model_dir, d)
    (d / "LICENSE.txt").write_text("licence\n")
    (d / "NOTICE").write_text("notice\n")
    return d


def test_manifest_written_and_verified(snapshot, tmp_path):
    prepared = model.prepare_model(snapshot, accepted=True)
    m = prepared.manifest
    assert prepared.path == snapshot
    assert (m["model_id"], m["version"], m["revision"], m["revision_source"]) == (
        "tencent/HunyuanOCR",
        "1.5",
        COMMIT,
        "hub",
    )
    paths = [f["path"] for f in m["files"]]
    assert "model.safetensors" in paths and "config.json" in paths
    assert not any(p.startswith("v1.0/") for p in paths)  # 1.0's files are not 1.5's
    weights = next(f for f in m["files"] if f["path"] == "model.safetensors")
    assert weights["sha256"] == model.sha256_file(snapshot / "model.safetensors")
    assert weights["size"] == (snapshot / "model.safetensors").stat().st_size

    dest = tmp_path / "layer" / "opt" / "model"
    model.install_model(prepared, dest)
    written = json.loads((dest / model.MANIFEST).read_text())
    assert written == m
    assert (dest / "model.safetensors").stat().st_mode & 0o777 == 0o644  # saved 0600, read by an unprivileged app
    model.verify(dest, written)
    # The engines read the identity from the manifest.
    assert model_info(dest) == ("tencent/HunyuanOCR", COMMIT)
    assert model_version(dest) == "1.5"


def test_one_flipped_byte_names_the_file(snapshot, tmp_path):
    prepared = model.prepare_model(snapshot, accepted=True)
    dest = tmp_path / "copy"
    model.install_model(prepared, dest)
    weights = dest / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelError) as e:
        model.verify(dest, prepared.manifest)
    assert str(weights) in str(e.value) and "does not match the model manifest" in str(e.value)


def test_pinned_manifest_in_the_model_dir_is_checked_before_build(snapshot, tmp_path):
    """A directory carrying appliance-model.json is verified against it; a changed file stops prepare_model."""
    first = model.prepare_model(snapshot, accepted=True)
    pinned_dir = tmp_path / "pinned"
    model.install_model(first, pinned_dir)
    shutil.copy(snapshot / "LICENSE", pinned_dir)
    shutil.copy(snapshot / "Notice.txt", pinned_dir)
    again = model.prepare_model(pinned_dir, version="1.5", accepted=True)
    assert again.manifest["revision"] == COMMIT  # kept from the pinned manifest
    (pinned_dir / "tokenizer.json").write_text("{}")
    with pytest.raises(ModelError, match=r"tokenizer\.json is \d+ bytes, the model manifest says \d+"):
        model.prepare_model(pinned_dir, version="1.5", accepted=True)


def test_missing_file_against_manifest(snapshot, tmp_path):
    prepared = model.prepare_model(snapshot, accepted=True)
    dest = tmp_path / "copy"
    model.install_model(prepared, dest)
    (dest / "preprocessor_config.json").unlink()
    with pytest.raises(ModelError) as e:
        model.verify(dest, prepared.manifest)
    assert f"{dest / 'preprocessor_config.json'} is missing" in str(e.value)


@pytest.mark.parametrize(
    "name, phrase",
    [
        ("config.json", "config.json is missing"),
        ("model.safetensors", "has no weights (*.safetensors)"),
        ("tokenizer.json", "has no tokenizer vocabulary"),
        ("tokenizer_config.json", "tokenizer_config.json is missing"),
        ("preprocessor_config.json", "has no image processor config"),
    ],
)
def test_required_files(plain_dir, name, phrase):
    (plain_dir / name).unlink()
    with pytest.raises(ModelError, match=phrase.replace("(", r"\(").replace(")", r"\)").replace("*", r"\*")):
        model.prepare_model(plain_dir, version="1.5", accepted=True)


def test_not_a_hunyuan_model(plain_dir):
    config = json.loads((plain_dir / "config.json").read_text())
    config["model_type"] = "qwen2_vl"
    (plain_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match="model_type is 'qwen2_vl', not 'hunyuan_vl'"):
        model.prepare_model(plain_dir, version="1.5", accepted=True)


def test_sharded_weights_need_every_shard(plain_dir):
    (plain_dir / "model.safetensors").rename(plain_dir / "model-00001-of-00002.safetensors")
    index = {
        "metadata": {},
        "weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"},
    }
    (plain_dir / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ModelError) as e:
        model.prepare_model(plain_dir, version="1.5", accepted=True)
    assert "model-00002-of-00002.safetensors is missing (named in model.safetensors.index.json)" in str(e.value)


def test_v10_subdir_choice(snapshot, tmp_path):
    prepared = model.prepare_model(snapshot, version="1.0", accepted=True)
    assert prepared.path == snapshot / "v1.0"
    assert prepared.manifest["version"] == "1.0"
    assert "extra-1.0-only.txt" in [f["path"] for f in prepared.manifest["files"]]
    # LICENSE/NOTICE live at the snapshot root only: found there.
    assert prepared.license_files["LICENSE"] == snapshot / "LICENSE"
    dest = tmp_path / "v10"
    model.install_model(prepared, dest)
    assert model_version(dest) == "1.0"


def test_version_must_be_chosen_when_ambiguous(plain_dir):
    with pytest.raises(ModelError, match="say which with --model-version 1.0 or --model-version 1.5"):
        model.prepare_model(plain_dir, accepted=True)
    with pytest.raises(ModelError, match="choose one of 1.5, 1.0"):
        model.prepare_model(plain_dir, version="2.0", accepted=True)


def test_v10_dir_given_as_15_is_refused(snapshot):
    with pytest.raises(ModelError, match="is the repository's v1.0/ directory"):
        model.prepare_model(snapshot / "v1.0", version="1.5", accepted=True)
    assert model.select_version(snapshot / "v1.0") == (snapshot / "v1.0", "1.0")


def test_plain_dir_revision_is_a_files_hash(plain_dir):
    m = model.prepare_model(plain_dir, version="1.5", accepted=True).manifest
    assert m["revision_source"] == "files"
    assert m["revision"] == "files-sha256:" + model.files_digest(m["files"])[:16]
    assert m["model_id"] == "tencent/HunyuanOCR"


def test_local_dir_download_metadata_gives_the_commit(plain_dir):
    meta = plain_dir / ".cache" / "huggingface" / "download" / "config.json.metadata"
    meta.parent.mkdir(parents=True)
    meta.write_text(f'{COMMIT}\n"etag"\n1700000000.0\n')
    m = model.prepare_model(plain_dir, version="1.5", accepted=True).manifest
    assert m["revision"] == COMMIT
    assert not any(f["path"].startswith(".cache") for f in m["files"])


def test_licence_refused_without_acceptance(snapshot):
    with pytest.raises(ModelError) as e:
        model.prepare_model(snapshot)
    msg = str(e.value)
    assert "Tencent Hunyuan Community License" in msg
    assert "European Union, the United Kingdom or South Korea" in msg
    assert "must ship the licence text and the Notice file" in msg
    assert "--accept-model-license" in msg


def test_licence_files_copied(snapshot, tmp_path):
    prepared = model.prepare_model(snapshot, accepted=True)
    copied = model.copy_license_files(prepared, tmp_path / "about")
    assert [p.name for p in copied] == ["LICENSE", "NOTICE"]
    assert (tmp_path / "about" / "LICENSE").read_text().startswith("TENCENT HUNYUAN COMMUNITY LICENSE")
    assert (tmp_path / "about" / "NOTICE").read_text() == "Notice: test copy\n"


def test_missing_notice_explains_the_duty(plain_dir):
    (plain_dir / "NOTICE").unlink()
    with pytest.raises(ModelError) as e:
        model.prepare_model(plain_dir, version="1.5", accepted=True)
    assert "NOTICE not found in" in str(e.value)
    assert "requires a redistribution (an image with the weights) to ship" in str(e.value)


def test_file_of_4_gib_is_refused_before_hashing(plain_dir):
    big = plain_dir / "model.safetensors"
    with open(big, "r+b") as f:  # sparse: no 4 GiB written, and nothing reads it (the size check comes first)
        f.truncate(4 * 2**30)
    with pytest.raises(ModelError) as e:
        model.prepare_model(plain_dir, version="1.5", accepted=True)
    assert f"{big} is 4.0 GiB" in str(e.value)
    assert 'save_pretrained(OUT_DIR, max_shard_size="2GB")' in str(e.value)
