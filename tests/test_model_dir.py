"""The model directory's facts (appliance.model_dir): its identity and version from the manifest, the hub cache
layout or its name. (The directory checks are exercised through an engine, in
tests/engines/test_transformers_engine.py; the image builder's manifest round trip in tests/build/test_model.py.)"""

from __future__ import annotations

import json
import shutil

from appliance.model_dir import IMAGE_MODEL_DIR, MANIFEST, model_info, model_version, read_manifest


def test_model_identity_without_a_manifest(tiny_model_dir, tmp_path):
    assert model_info(tiny_model_dir) == (tiny_model_dir.name, "unknown")
    assert model_version(tiny_model_dir) == "1.0"

    # The Hugging Face cache layout names the repository and the revision.
    snapshot = tmp_path / "models--tencent--HunyuanOCR" / "snapshots" / "9f8e7d6c"
    shutil.copytree(tiny_model_dir, snapshot)
    assert model_info(snapshot) == ("tencent/HunyuanOCR", "9f8e7d6c")
    shutil.copytree(tiny_model_dir, snapshot / "v1.0")  # the repo keeps 1.0 in a subfolder
    assert model_info(snapshot / "v1.0") == ("tencent/HunyuanOCR", "9f8e7d6c")
    assert model_version(snapshot / "v1.0") == "1.0"


def test_manifest_is_read_leniently(tmp_path):
    assert read_manifest(tmp_path) == {}
    (tmp_path / MANIFEST).write_text("[1, 2]")
    assert read_manifest(tmp_path) == {}  # not a dict: no manifest
    (tmp_path / MANIFEST).write_text(json.dumps({"model_id": "tencent/HunyuanOCR", "version": "1.5"}))
    assert model_version(tmp_path) == "1.5"
    assert IMAGE_MODEL_DIR.is_absolute()
