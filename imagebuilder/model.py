"""The gpu profile's model directory: pick the version, check the files, hash them, and honour the licence.

`appliance build --profile gpu --model DIR [--model-version 1.5|1.0] --accept-model-license` takes DIR as a local
snapshot of the Hugging Face repository tencent/HunyuanOCR: version 1.5 at its root, 1.0 under `v1.0/`. Everything
here runs BEFORE anything is built or downloaded, so a wrong directory costs seconds, not a half-built image:

  prepare_model(DIR, version, accepted)   licence accepted? version dir, required files, 4 GiB rule, sha256 of every
                                          file (or a check against the directory's own appliance-model.json),
                                          LICENSE and NOTICE found
  install_model(prepared, DEST)           copy the manifest's files into the model layer tree, verify the copies,
                                          write DEST/appliance-model.json (the engines' model_info() reads it)
  copy_license_files(prepared, DEST)      LICENSE + NOTICE for the image's About page and the output folder
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from appliance.files import sha256_file, write_atomic
from appliance.gpu import COMPILE_CACHE
from appliance.model_dir import IMAGE_MODEL_DIR as IMAGE_MODEL_PATH
from appliance.model_dir import MANIFEST, MODEL_TYPE
from imagebuilder import cpu_model, layers
from imagebuilder.context import BuildError, hash_inputs, inputs_epoch
from imagebuilder.layers import ISO_FILE_LIMIT

DEFAULT_MODEL_ID = "tencent/HunyuanOCR"
VERSIONS = ("1.5", "1.0")
VERSION_SUBDIRS = {"1.0": "v1.0"}  # the hub repo's layout since 2026-07: 1.5 at the root, 1.0 in v1.0/
LICENSE_TITLE = "Tencent Hunyuan Community License"
# Usual names in model repositories, compared case-insensitively, with any extension.
LICENSE_STEMS = ("license", "licence", "license_agreement")
NOTICE_STEMS = ("notice",)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")  # or a *.tiktoken file
PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")


class ModelError(ValueError):
    """The model directory or the licence step stops the build; the message names the file and the fix."""


@dataclass
class PreparedModel:
    """A checked model directory, ready to copy: its files' sha256 are known."""

    path: Path  # the version's directory (DIR or DIR/v1.0)
    manifest: dict  # what appliance-model.json will say
    license_files: dict[str, Path] = field(default_factory=dict)  # {"LICENSE": path, "NOTICE": path}
    sources: dict[str, Path] = field(default_factory=dict)  # files not in `path` (converted GGUF): {rel: file}

    @property
    def files(self) -> list[dict]:
        return self.manifest["files"]


# --- licence --------------------------------------------------------------------------------------------------


LICENSE_TERMS = (
    f"The HunyuanOCR weights are under the {LICENSE_TITLE}. Its terms include: it is NOT licensed for use in the "
    "European Union, the United Kingdom or South Korea; services with more than 100 million monthly active users "
    "need a separate licence from Tencent; outputs may not be used to improve other AI models; and an image that "
    "bundles the weights is a redistribution, which must ship the licence text and the Notice file with it."
)


def require_license(accepted: bool) -> None:
    """Refuse unless the user accepted the licence explicitly (--accept-model-license)."""
    if not accepted:
        raise ModelError(
            f"{LICENSE_TERMS} Read the licence (the LICENSE file in the model directory), and if you "
            "accept it and your site is outside those territories, run the build again with "
            "--accept-model-license."
        )


def find_license_files(
    model_dir: str | os.PathLike, snapshot_dir: str | os.PathLike | None = None
) -> dict[str, Path]:
    """{"LICENSE": path, "NOTICE": path}, looked up in the version's directory, then in the snapshot's root."""
    places = [Path(model_dir)] + ([Path(snapshot_dir)] if snapshot_dir else [])
    found: dict[str, Path] = {}
    for kind, stems in (("LICENSE", LICENSE_STEMS), ("NOTICE", NOTICE_STEMS)):
        for place in places:
            hits = sorted(p for p in place.iterdir() if p.is_file() and p.name.split(".")[0].lower() in stems)
            if hits:
                found[kind] = hits[0]
                break
    missing = [k for k in ("LICENSE", "NOTICE") if k not in found]
    if missing:
        raise ModelError(
            f"{' and '.join(missing)} not found in {places[0]}"
            + (f" or {places[1]}" if len(places) > 1 else "")
            + f": the {LICENSE_TITLE} requires a redistribution (an image with the weights) to ship the "
            "licence text and the Notice file. Copy LICENSE and NOTICE from the model's Hugging Face "
            "repository into the model directory."
        )
    return found


def copy_license_files(prepared: PreparedModel, dest: str | os.PathLike) -> list[Path]:
    """LICENSE and NOTICE into `dest` under those fixed names (the About page and the output folder read them)."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    copied = []
    for kind, source in sorted(prepared.license_files.items()):
        target = dest / kind
        shutil.copyfile(source, target)
        target.chmod(0o644)
        copied.append(target)
    return copied


# --- which directory, which files -----------------------------------------------------------------------------


def select_version(snapshot_dir: str | os.PathLike, version: str | None = None) -> tuple[Path, str]:
    """(directory of the chosen version, version) in a snapshot of the hub repo (1.5 at the root, 1.0 in v1.0/).

    With no version: the root when v1.0/ is beside it (then the root is 1.5), a directory named v1.0 is 1.0;
    a root without v1.0/ may be either (snapshots from before 2026-07 hold 1.0 at the root), so the user must say.
    """
    root = Path(snapshot_dir).expanduser()
    if not root.is_dir():
        raise ModelError(f"model directory {root} does not exist")
    if version is not None and version not in VERSIONS:
        raise ModelError(f"--model-version {version}: choose one of {', '.join(VERSIONS)}")
    sub = root / VERSION_SUBDIRS["1.0"]
    named_v10 = root.name == VERSION_SUBDIRS["1.0"]
    if version is None:
        if sub.is_dir():
            return root, "1.5"
        if named_v10:
            return root, "1.0"
        raise ModelError(
            f"{root} has no v1.0/ subdirectory, so it may hold HunyuanOCR 1.0 (snapshots from before "
            "2026-07) or 1.5: say which with --model-version 1.0 or --model-version 1.5"
        )
    if version == "1.0":
        return (sub if sub.is_dir() else root), "1.0"
    if named_v10:
        raise ModelError(
            f"{root} is the repository's v1.0/ directory (HunyuanOCR 1.0), not 1.5: give the "
            "snapshot's root for 1.5, or --model-version 1.0"
        )
    return root, "1.5"


def model_files(model_dir: Path) -> list[str]:
    """Every file of the model (relative, '/'-separated, sorted): not the v1.0/ subtree of a 1.5 root, not hidden
    files (.git, .cache/huggingface), not a previous appliance-model.json. Symlinks (the hub cache) are followed."""
    files = []
    for dirpath, dirnames, filenames in os.walk(model_dir, followlinks=True):
        rel_dir = Path(dirpath).relative_to(model_dir)
        dirnames[:] = sorted(
            d
            for d in dirnames
            if not d.startswith(".") and not (rel_dir == Path(".") and d in VERSION_SUBDIRS.values())
        )
        for name in filenames:
            rel = (rel_dir / name).as_posix()
            if not name.startswith(".") and rel != MANIFEST:
                files.append(rel)
    return sorted(files)


def check_required_files(model_dir: Path, files: list[str]) -> None:
    """config.json of a hunyuan_vl model, its weights (every shard the index names), tokenizer and processor files."""
    names = set(files)
    config_path = model_dir / "config.json"
    if "config.json" not in names:
        raise ModelError(f"{config_path} is missing: {model_dir} is not a model directory")
    try:
        model_type = json.loads(config_path.read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError) as e:
        raise ModelError(f"{config_path} is not readable JSON: {e}") from None
    if model_type != MODEL_TYPE:
        raise ModelError(f"{config_path}: model_type is '{model_type}', not '{MODEL_TYPE}': not HunyuanOCR")
    weights = sorted(f for f in names if f.endswith(".safetensors"))
    if not weights:
        raise ModelError(f"{model_dir} has no weights (*.safetensors); the appliance loads safetensors only")
    index_name = "model.safetensors.index.json"
    if len(weights) > 1 or index_name in names:
        if index_name not in names:
            raise ModelError(f"{model_dir / index_name} is missing: the weights are sharded ({len(weights)} files)")
        try:
            shards = set(json.loads((model_dir / index_name).read_text(encoding="utf-8"))["weight_map"].values())
        except (OSError, ValueError, KeyError, AttributeError) as e:
            raise ModelError(f"{model_dir / index_name} is not a valid safetensors index: {e}") from None
        missing = sorted(shards - names)
        if missing:
            raise ModelError(f"{model_dir / missing[0]} is missing (named in {index_name})")
    if "tokenizer_config.json" not in names:
        raise ModelError(f"{model_dir / 'tokenizer_config.json'} is missing")
    if not (names & set(TOKENIZER_FILES) or any(f.endswith(".tiktoken") for f in names)):
        raise ModelError(f"{model_dir} has no tokenizer vocabulary ({', '.join(TOKENIZER_FILES)} or *.tiktoken)")
    if not names & set(PROCESSOR_FILES):
        raise ModelError(f"{model_dir} has no image processor config ({' or '.join(PROCESSOR_FILES)})")


def check_file_sizes(model_dir: Path, files: list[str], limit: int = ISO_FILE_LIMIT) -> None:
    """No file may reach 4 GiB: it has to fit in a squashfs layer that stays under the ISO/FAT32 per-file limit."""
    for rel in files:
        size = (model_dir / rel).stat().st_size
        if size >= limit:
            raise ModelError(
                f"{model_dir / rel} is {size / 2**30:.1f} GiB: no file in the image may reach 4 GiB (FAT32 USB "
                "writers such as Rufus, Ventoy and UltraISO's file mode cannot copy it). Re-shard the weights into "
                "smaller files: load the model with transformers and save it again with "
                'model.save_pretrained(OUT_DIR, max_shard_size="2GB"), then build from OUT_DIR.'
            )


# --- identity and manifest ------------------------------------------------------------------------------------


_COMMIT = re.compile(r"[0-9a-f]{40}")


def hub_identity(snapshot_dir: Path, model_dir: Path) -> tuple[str | None, str | None]:
    """(model id, commit) from how the hub client left the directory, when it did.

    The cache layout is models--ORG--NAME/snapshots/<commit>/; `hf download --local-dir` writes the commit as
    the first line of .cache/huggingface/download/<file>.metadata.
    """
    parts = snapshot_dir.resolve().parts
    for i in range(len(parts) - 2, 0, -1):
        if parts[i] == "snapshots" and parts[i - 1].startswith("models--") and _COMMIT.fullmatch(parts[i + 1]):
            return parts[i - 1][len("models--") :].replace("--", "/"), parts[i + 1]
    rel_config = (model_dir / "config.json").relative_to(snapshot_dir).as_posix()
    meta = snapshot_dir / ".cache" / "huggingface" / "download" / f"{rel_config}.metadata"
    try:
        first = meta.read_text(encoding="utf-8").splitlines()[0].strip()
    except (OSError, IndexError):
        return None, None
    return None, (first if _COMMIT.fullmatch(first) else None)


def file_entries(model_dir: Path, files: list[str]) -> list[dict]:
    return [
        {"path": rel, "size": (model_dir / rel).stat().st_size, "sha256": sha256_file(model_dir / rel)}
        for rel in files
    ]


def files_digest(entries: list[dict]) -> str:
    """One hash of the file list (path, size, sha256): the revision when the hub commit is unknown."""
    text = "".join(f"{e['sha256']}  {e['size']}  {e['path']}\n" for e in sorted(entries, key=lambda e: e["path"]))
    return hashlib.sha256(text.encode()).hexdigest()


def make_manifest(
    model_dir: Path, version: str, files: list[str], snapshot_dir: Path | None = None, model_id: str | None = None
) -> dict:
    entries = file_entries(model_dir, files)
    hub_id, commit = hub_identity(snapshot_dir or model_dir, model_dir)
    return {
        "schema": "appliance.model",
        "schema_version": 1,
        "model_id": model_id or hub_id or DEFAULT_MODEL_ID,
        "version": version,
        # The hub commit when the snapshot shows it; otherwise the file list's own hash, marked as such.
        "revision": commit or f"files-sha256:{files_digest(entries)[:16]}",
        "revision_source": "hub" if commit else "files",
        "files_sha256": files_digest(entries),
        "files": entries,
    }


def read_manifest(model_dir: str | os.PathLike) -> dict | None:
    path = Path(model_dir) / MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelError(f"{path} is not readable JSON: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("files"), list):
        raise ModelError(f"{path} has no 'files' list: not an appliance model manifest")
    return data


def write_manifest(dest: str | os.PathLike, manifest: dict) -> Path:
    path = Path(dest) / MANIFEST
    write_atomic(path, (json.dumps(manifest, indent=1, ensure_ascii=False) + "\n").encode("utf-8"))
    path.chmod(0o644)
    return path


def verify(model_dir: str | os.PathLike, manifest: dict) -> None:
    """Every file of the manifest is in model_dir with its size and sha256; else ModelError naming the file."""
    model_dir = Path(model_dir)
    for entry in manifest["files"]:
        path = model_dir / entry["path"]
        if not path.is_file():
            raise ModelError(
                f"{path} is missing (listed in the model manifest with sha256 {entry['sha256'][:12]}...)"
            )
        size = path.stat().st_size
        if size != entry["size"]:
            raise ModelError(
                f"{path} is {size} bytes, the model manifest says {entry['size']}: the file is "
                "incomplete or a different one; download it again"
            )
        digest = sha256_file(path)
        if digest != entry["sha256"]:
            raise ModelError(
                f"{path} does not match the model manifest (sha256 {digest[:12]}..., expected "
                f"{entry['sha256'][:12]}...): the file is corrupt or changed; download it again"
            )


# --- the two steps the builder calls --------------------------------------------------------------------------


def prepare_model(
    snapshot_dir: str | os.PathLike, version: str | None = None, accepted: bool = False, model_id: str | None = None
) -> PreparedModel:
    """Every check on the model directory, before anything is built (see the module docstring)."""
    require_license(accepted)
    snapshot = Path(snapshot_dir).expanduser()
    model_dir, version = select_version(snapshot, version)
    files = model_files(model_dir)
    check_required_files(model_dir, files)
    check_file_sizes(model_dir, files)
    license_files = find_license_files(model_dir, snapshot if snapshot != model_dir else None)
    pinned = read_manifest(model_dir)
    if pinned:  # a directory that carries its manifest (a previous build's, or one a site pins): check against it
        if pinned.get("version") and str(pinned["version"]) != version:
            raise ModelError(f"{model_dir / MANIFEST} says version {pinned['version']}, but {version} was chosen")
        check_required_files(model_dir, [e["path"] for e in pinned["files"]])  # only its files get copied
        verify(model_dir, pinned)
        manifest = {**pinned, "version": version, "model_id": model_id or pinned.get("model_id") or DEFAULT_MODEL_ID}
    else:
        manifest = make_manifest(model_dir, version, files, snapshot, model_id)
    return PreparedModel(path=model_dir, manifest=manifest, license_files=license_files)


def install_model(prepared: PreparedModel, dest: str | os.PathLike) -> dict:
    """Copy the manifest's files into dest (world-readable: the app runs unprivileged), verify the copies, write
    dest/appliance-model.json. Returns the manifest (its `files` are what manifest.json's model_files lists)."""
    dest = Path(dest)
    for entry in prepared.files:
        target = dest / entry["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        source = prepared.sources.get(entry["path"], prepared.path / entry["path"])
        shutil.copyfile(source, target)  # follows the hub cache's symlinks
        target.chmod(0o644)
    verify(dest, prepared.manifest)
    write_manifest(dest, prepared.manifest)
    return prepared.manifest


# --- the build stages (gpu profile) ---------------------------------------------------------------------------

IMAGE_MODEL_DIR = IMAGE_MODEL_PATH.relative_to("/")  # in the image tree; config.json names it (appliance.runtime)
IMAGE_LICENSE_DIR = "usr/share/doc/appliance-model"  # LICENSE + NOTICE, shown on the status page
ORDER = 20
PART_BUDGET = 3 * 2**30  # bytes of weights per squashfs: each stays under the 4 GiB per-file limit


def check_model(ctx) -> str:
    """Build stage: licence accepted, the version's directory complete and hashed, before anything is built."""
    c = ctx.config
    if not c.model_dir:
        raise BuildError(
            f"the {c.profile} profile bundles HunyuanOCR (gpu_stack is {c.gpu_stack}): give the weights with "
            "--model DIR (a local snapshot of tencent/HunyuanOCR) and --accept-model-license"
        )
    try:
        prepared = prepare_model(c.model_dir, c.model_version, c.accept_model_license)
    except ModelError as e:
        raise BuildError(str(e)) from None
    ctx.info["model"] = prepared
    ctx.info["compile_cache"] = compile_cache_architectures(c.vllm_compile_cache)
    size = sum(e["size"] for e in prepared.files)
    m = prepared.manifest
    return (
        f"{m['model_id']} {m['version']} revision {m['revision']}: {len(prepared.files)} files, "
        f"{size / 2**20:.1f} MiB, from {prepared.path}"
        + (f"; vLLM compile cache for {', '.join(ctx.info['compile_cache'])}" if c.vllm_compile_cache else "")
    )


def compile_cache_architectures(cache_dir) -> list[str]:
    """The architectures (sm_89 ...) a vllm_compile_cache directory holds; BuildError unless it holds at least one
    and nothing else."""
    if not cache_dir:
        return []
    root = Path(cache_dir)
    if not root.is_dir():
        raise BuildError(f"vllm_compile_cache: {root} is not a directory")
    folders = sorted(p.name for p in root.iterdir())
    strangers = [
        name for name in folders if not re.fullmatch(r"sm_\d{2,3}", name) or not any((root / name).iterdir())
    ]
    if strangers or not folders:
        raise BuildError(
            f"vllm_compile_cache: {root} must hold one non-empty folder per GPU architecture, named sm_<compute "
            f"capability> (sm_89 for an RTX 4090, sm_90 for an H100), each the VLLM_CACHE_ROOT of a server started "
            "once without --enforce-eager on such a card; "
            + (f"found {', '.join(strangers)}" if strangers else "it is empty")
        )
    return folders


def build_model_layer(ctx) -> str:
    """The weights in their own squashfs layer(s), keyed by the files' hashes: a new app never re-squashes them."""
    checked: PreparedModel = ctx.info["model"]
    # What goes in: the checkpoint's files (without its weights where nothing loads them) and the GGUF files.
    files, sources, gguf_facts = cpu_model.plan(ctx.config, ctx.cache_dir, checked.path, checked.manifest)
    for e in files:
        if e["path"] in sources and e["size"] >= ISO_FILE_LIMIT:
            raise BuildError(
                f"{sources[e['path']]} is {e['size'] / 2**30:.1f} GiB: no file in the image may reach 4 GiB; "
                "choose a smaller --set cpu_model_quant (q8_0, q4_k_m)"
            )
    manifest = {**checked.manifest, "files": files, **({"gguf": gguf_facts} if gguf_facts else {})}
    prepared = PreparedModel(checked.path, manifest, checked.license_files, sources)
    parts = layers.pack([(e["path"], e["size"]) for e in prepared.files], PART_BUDGET)
    epoch = inputs_epoch(ctx, "imagebuilder/model.py")
    cache = Path(ctx.config.vllm_compile_cache) if ctx.config.vllm_compile_cache else None
    key = hash_inputs(
        "model", prepared.manifest, parts, ctx.config.compression, epoch, Path(__file__), *([cache] if cache else [])
    )
    made = []
    for i, paths in enumerate(parts):
        name = "model" if i == 0 else f"model{i + 1}"

        def fill(tree: Path, i=i, paths=paths) -> dict:
            dest = tree / IMAGE_MODEL_DIR
            part = PreparedModel(
                prepared.path,
                {**prepared.manifest, "files": [e for e in prepared.files if e["path"] in set(paths)]},
                prepared.license_files,
                prepared.sources,
            )
            install_model(part, dest)  # copies and verifies this part's files
            if i == 0:  # the manifest (all files), the licence and any compile cache go with the first part
                write_manifest(dest, prepared.manifest)
                copy_license_files(prepared, tree / IMAGE_LICENSE_DIR)
                if cache:
                    shutil.copytree(cache, tree / COMPILE_CACHE.relative_to("/"), symlinks=True)
            else:
                (dest / MANIFEST).unlink()
            return {"files": paths}

        made.append(layers.reuse_or_build(ctx, layers.cached_layer(ctx, name, ORDER + i, key, epoch), fill))
    # The licence and notice also go beside the ISO: whoever receives the image gets them (a redistribution).
    lic = ctx.work / "model-license"
    for copied in copy_license_files(prepared, lic):
        target = lic / f"{ctx.stem}.model-{copied.name}.txt"
        copied.rename(target)
        ctx.files[f"model_{copied.name.lower()}"] = target
    ctx.info["model_files"] = prepared.files
    ctx.info["model_identity"] = {
        k: prepared.manifest[k] for k in ("model_id", "version", "revision", "revision_source", "files_sha256")
    }
    ctx.info["model_identity"]["vllm_compile_cache"] = ctx.info.get("compile_cache", [])
    if gguf_facts:
        ctx.info["model_identity"]["gguf"] = gguf_facts
    return ", ".join(layers.describe(layer) + (" (reused)" if layer.cached else "") for layer in made)
