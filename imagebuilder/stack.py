"""The GPU stack resolver: NVIDIA driver -> CUDA -> torch -> vLLM -> transformers, checked before any download.

Most failures people hit with this model are version breakage across those five pieces, so the gpu profile never
takes them as free choices: it starts from a lock in build/locks/ (or explicit versions), and resolve_stack()
checks every pair against the small tables below. An incompatible combination is a StackError whose message says
which piece is wrong and what to do instead. Facts behind the tables: ../shared/reference/hunyuanocr.md; the vLLM
and torch pins were read again from PyPI's METADATA on 2026-11-21 (pip install --dry-run --report, no wheel
downloaded).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from imagebuilder.settings import REPO

LOCKS_DIR = REPO / "build" / "locks"

# --- The compatibility table -------------------------------------------------------------------------------------

# torch release -> CUDA of its default PyPI wheels: nvidia-*-cu12==12.8.x up to 2.10, cuda-toolkit==13.0.x from 2.11.
# Torch below 2.9 is older than every vLLM that serves HunYuanVL.
TORCH_CUDA = (  # (first torch, first torch past the range, CUDA)
    ("2.9", "2.11", "12.8"),
    ("2.11", "3", "13.0"),
)
# CUDA major -> lowest NVIDIA kernel driver (12.x: minor-version compatibility from 525; 13: 580).
CUDA_MIN_DRIVER = {12: 525, 13: 580}


@dataclass(frozen=True)
class VllmPins:
    torch: str  # vLLM pins torch exactly
    transformers: tuple[str | None, str | None]  # (lowest, first excluded); None: no bound
    python_below: str  # Requires-Python upper bound (exclusive)


# vLLM release -> its METADATA pins. HunYuanVL: native model code in 0.12-0.28; from 0.29 through vLLM's
# Transformers backend (so transformers itself must know hunyuan_vl).
VLLM = {
    "0.12.0": VllmPins("2.9.0", ("4.56.0", "5"), "3.14"),
    "0.15.1": VllmPins("2.9.1", ("4.56.0", "5"), "3.14"),
    "0.18.1": VllmPins("2.10.0", ("4.56.0", "5"), "3.14"),
    "0.24.0": VllmPins("2.11.0", ("5.5.3", None), "3.15"),
    "0.26.0": VllmPins("2.11.0", ("5.5.3", None), "3.15"),
    "0.28.0": VllmPins("2.13.0", ("5.5.3", None), "3.15"),
    "0.29.0": VllmPins("2.13.0", ("5.10.4", None), "3.15"),
    "0.33.0": VllmPins("2.14.0", ("5.16.1", "5.21"), "3.15"),
}
VLLM_FIRST_HUNYUAN = "0.12"  # first vLLM with HunYuanVL at all
VLLM_FIRST_TRANSFORMERS_BACKEND = "0.29"  # from here HunYuanVL runs through transformers' own model code
TRANSFORMERS_HUNYUAN_VL = "5.13"  # first transformers with hunyuan_vl (5.12 lacks it)
BLACKWELL_MIN_DRIVER = 570  # Blackwell needs a driver newer than 550 (its first branch is R570) + the open modules

# Debian's archive: the one driver it has, and the module flavours that build for the image's kernel.
# nvidia-open-kernel-dkms 550.163.01 fails against trixie's 6.12 (pci_resize_resource signature): proprietary only.
DEBIAN_DRIVER = {"version": "550.163.01", "flavours": ("proprietary",)}
OPEN_MODULES_IN_RUN_FROM = 515  # NVIDIA's .run installer carries both flavours since R515

DEFAULT_LOCK = "cuda12-debian-driver"
CUDA12_LOCK = "cuda12-debian-driver"
CUDA13_LOCK = "cuda13-user-driver"
SET_DRIVER = "--set nvidia_driver_source=DIR"


class StackError(ValueError):
    """An incompatible or unusable stack; `piece` names what is wrong (driver, torch, vllm, transformers, ...)."""

    def __init__(self, piece: str, message: str):
        super().__init__(message)
        self.piece = piece


def version_tuple(version: str) -> tuple[int, ...]:
    """'2.10.0' -> (2, 10, 0); local labels and suffixes ('2.10.0+cu128', '580.95.05-1') are ignored."""
    numbers = re.match(r"\d+(?:\.\d+)*", str(version).strip())
    if not numbers:
        raise ValueError(f"not a version: {version!r}")
    parts = [int(p) for p in numbers.group(0).split(".")]
    while len(parts) > 1 and parts[-1] == 0:  # 2.10 == 2.10.0
        parts.pop()
    return tuple(parts)


def at_least(version: str, lowest: str) -> bool:
    return version_tuple(version) >= version_tuple(lowest)


def in_range(version: str, lowest: str | None, below: str | None) -> bool:
    return (lowest is None or at_least(version, lowest)) and (below is None or not at_least(version, below))


def range_text(lowest: str | None, below: str | None) -> str:
    return ",".join(p for p in (f">={lowest}" if lowest else "", f"<{below}" if below else "") if p) or "any"


# --- The driver source ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Driver:
    source: str  # debian | deb-dir | run
    version: str
    flavours: tuple[str, ...]  # kernel module flavours the source can build: open, proprietary
    path: Path | None = None

    @property
    def major(self) -> int:
        return version_tuple(self.version)[0]

    def describe(self) -> str:
        where = {
            "debian": "Debian's archive has",
            "deb-dir": f"the driver in {self.path} is",
            "run": f"the installer {self.path} is",
        }[self.source]
        return f"{where} {self.version}"


# Package names that carry the kernel modules: Debian's and NVIDIA's repositories name the open flavour differently.
DKMS_PACKAGES = {
    "nvidia-kernel-dkms": "proprietary",
    "nvidia-open-kernel-dkms": "open",
    "nvidia-kernel-open-dkms": "open",
}
_RUN_NAME = re.compile(r"NVIDIA-Linux-x86_64-(\d+\.\d+(?:\.\d+)?)\.run")


def driver_from_source(source: str | None, version: str | None = None) -> Driver:
    """'debian', a directory of NVIDIA .deb packages, or NVIDIA's .run installer -> Driver (version and flavours)."""
    source = (source or "debian").strip()
    if source == "debian":
        if version and version_tuple(version) != version_tuple(DEBIAN_DRIVER["version"]):
            raise StackError(
                "driver",
                f"NVIDIA driver {version} is not in Debian's archive (it has "
                f"{DEBIAN_DRIVER['version']} only). Give that driver's packages with {SET_DRIVER}, "
                "or drop nvidia_driver_version to use Debian's.",
            )
        return Driver("debian", DEBIAN_DRIVER["version"], DEBIAN_DRIVER["flavours"])
    path = Path(source).expanduser()
    if path.is_dir():
        found = _driver_debs(path)
        if not found:
            raise StackError(
                "driver",
                f"nvidia_driver_source {path} holds no NVIDIA kernel module package "
                f"({' or '.join(DKMS_PACKAGES)}_<version>_amd64.deb); put NVIDIA's .deb packages there.",
            )
        versions = sorted({v for v, _ in found.values()}, key=version_tuple)
        if len(versions) > 1:
            raise StackError(
                "driver",
                f"nvidia_driver_source {path} mixes NVIDIA driver versions "
                f"{', '.join(versions)}; keep the packages of one version only.",
            )
        driver = Driver("deb-dir", versions[0], tuple(sorted({f for _, f in found.values()})), path)
    elif path.is_file() and _RUN_NAME.fullmatch(path.name):
        found_version = _RUN_NAME.fullmatch(path.name).group(1)
        flavours = (
            ("open", "proprietary")
            if version_tuple(found_version)[0] >= OPEN_MODULES_IN_RUN_FROM
            else ("proprietary",)
        )
        driver = Driver("run", found_version, flavours, path)
    elif path.is_file():
        raise StackError(
            "driver",
            f"nvidia_driver_source {path} is not NVIDIA's installer "
            "(expected NVIDIA-Linux-x86_64-<version>.run) nor a directory of .deb packages.",
        )
    else:
        raise StackError(
            "driver",
            f"nvidia_driver_source {path} does not exist: give 'debian', a directory of "
            "NVIDIA's .deb packages, or NVIDIA-Linux-x86_64-<version>.run.",
        )
    if version and version_tuple(version) != version_tuple(driver.version):
        raise StackError(
            "driver",
            f"nvidia_driver_version is {version} but {driver.describe()}; "
            "make them agree (or leave nvidia_driver_version unset).",
        )
    return driver


def _driver_debs(directory: Path) -> dict[str, tuple[str, str]]:
    """{package: (upstream version, flavour)} for the module packages among directory's .deb files."""
    found = {}
    for deb in directory.glob("*.deb"):
        package, _, rest = deb.name.partition("_")
        if package in DKMS_PACKAGES and rest:
            upstream = rest.split("_")[0].split(":")[-1].split("-")[0]  # epoch:upstream-debian_revision
            found[package] = (upstream, DKMS_PACKAGES[package])
    return found


# --- Locks ------------------------------------------------------------------------------------------------------


def lock_names(locks_dir: Path = LOCKS_DIR) -> list[str]:
    return sorted(p.stem for p in Path(locks_dir).glob("*.yaml"))


def load_lock(name: str, locks_dir: Path = LOCKS_DIR) -> dict:
    """A lock by name (build/locks/<name>.yaml) or path."""
    path = Path(name) if name.endswith((".yaml", ".yml")) or "/" in name else Path(locks_dir) / f"{name}.yaml"
    if not path.is_file():
        raise StackError(
            "lock", f"GPU stack lock '{name}' not found ({path}); known locks: {', '.join(lock_names(locks_dir))}"
        )
    data = yaml.safe_load(path.read_text()) or {}
    packages = data.get("packages") or {}
    missing = [k for k in ("vllm", "torch", "transformers") if not packages.get(k)]
    if missing:
        raise StackError("lock", f"{path}: packages: missing {', '.join(missing)}")
    return {**data, "path": str(path)}


# --- The resolver -----------------------------------------------------------------------------------------------


@dataclass
class Stack:
    """A checked driver + CUDA + Python package set: what the gpu image is built from and manifest.json records."""

    name: str  # the lock's name, or 'custom' (with '+overrides' when a lock's pins were changed)
    driver: Driver
    cuda: str
    vllm: str
    torch: str
    transformers: str
    hunyuan_vl: str  # how vLLM runs the model: native | transformers-backend
    engines: tuple[str, ...]  # GPU engines this image offers
    blackwell: bool  # whether Blackwell GPUs can use this stack
    warnings: list[str] = field(default_factory=list)
    wheel_sha256: dict = field(default_factory=dict)

    def requirements(self) -> list[str]:
        """pip requirements for the GPU venv (the rest of its dependencies follow from these pins)."""
        return [f"vllm=={self.vllm}", f"torch=={self.torch}", f"transformers=={self.transformers}"]

    def as_dict(self) -> dict:
        """For manifest.json ("gpu_stack") and the image's /etc/appliance/gpu-stack.json (appliance.gpu reads it)."""
        return {
            "name": self.name,
            "driver": {
                "source": self.driver.source,
                "version": self.driver.version,
                "flavours": list(self.driver.flavours),
                "path": str(self.driver.path) if self.driver.path else None,
            },
            "cuda": self.cuda,
            "vllm": self.vllm,
            "torch": self.torch,
            "transformers": self.transformers,
            "hunyuan_vl": self.hunyuan_vl,
            "engines": list(self.engines),
            "blackwell": self.blackwell,
            "warnings": list(self.warnings),
        }


def torch_cuda(torch: str) -> str:
    for lowest, below, cuda in TORCH_CUDA:
        if in_range(torch, lowest, below):
            return cuda
    raise StackError(
        "torch",
        f"torch {torch} is outside the checked range (torch {TORCH_CUDA[0][0]} and newer, "
        f"the oldest any HunYuanVL-capable vLLM pins); use the {CUDA12_LOCK} lock.",
    )


def resolve_stack(
    driver_source: str | None = "debian",
    driver_version: str | None = None,
    lock: str | None = None,
    torch: str | None = None,
    vllm: str | None = None,
    transformers: str | None = None,
    python_version: str = "3.13",
    need_blackwell: bool = False,
    locks_dir: Path = LOCKS_DIR,
) -> Stack:
    """The profile's choices -> a checked Stack, or StackError naming the incompatible piece and what to do.

    `lock` defaults to cuda12-debian-driver when no explicit versions are given; explicit versions override the
    lock's pins (then every pin must be given or come from the lock). Nothing is downloaded here: a driver source
    is only listed (file names), so this runs first in a build and in `--dump-config`.
    """
    explicit = {"vllm": vllm, "torch": torch, "transformers": transformers}
    data = load_lock(lock or DEFAULT_LOCK, locks_dir) if (lock or not any(explicit.values())) else {}
    pins = {**(data.get("packages") or {}), **{k: v for k, v in explicit.items() if v}}
    missing = [k for k in ("vllm", "torch", "transformers") if not pins.get(k)]
    if missing:
        raise StackError(
            "lock",
            f"no version for {', '.join(missing)}: give a lock (--set gpu_stack=NAME, known: "
            f"{', '.join(lock_names(locks_dir))}) or all of torch, vllm and transformers versions.",
        )
    vllm, torch, transformers = str(pins["vllm"]), str(pins["torch"]), str(pins["transformers"])
    name = data.get("name") or "custom"
    if data and any(v and str(v) != str(data["packages"][k]) for k, v in explicit.items()):
        name += "+overrides"

    driver = driver_from_source(driver_source, driver_version)

    # vLLM: a checked release that can serve HunYuanVL at all.
    if not at_least(vllm, VLLM_FIRST_HUNYUAN):
        raise StackError(
            "vllm",
            f"vLLM {vllm} predates HunYuanVL support (native from {VLLM_FIRST_HUNYUAN}.0); "
            f"use the {CUDA12_LOCK} lock (vLLM {VLLM_BY_LOCK[CUDA12_LOCK]}).",
        )
    pins_of = VLLM.get(str(vllm))
    if pins_of is None:
        raise StackError(
            "vllm",
            f"vLLM {vllm} is not in the checked table ({', '.join(VLLM)}); pick one of those "
            "or add its METADATA pins to imagebuilder/stack.py VLLM after checking them.",
        )
    hunyuan_vl = "transformers-backend" if at_least(vllm, VLLM_FIRST_TRANSFORMERS_BACKEND) else "native"

    # torch: exactly vLLM's pin.
    if version_tuple(torch) != version_tuple(pins_of.torch):
        others = [v for v, p in VLLM.items() if version_tuple(p.torch) == version_tuple(torch)]
        hint = f", or a vLLM that pins torch {torch} ({', '.join(others)})" if others else ""
        raise StackError(
            "torch", f"vLLM {vllm} pins torch=={pins_of.torch}, not torch {torch}: use torch {pins_of.torch}{hint}."
        )

    # torch -> CUDA -> driver.
    cuda = torch_cuda(torch)
    cuda_major = int(cuda.split(".")[0])
    min_driver = CUDA_MIN_DRIVER[cuda_major]
    if driver.major < min_driver:
        if driver.source == "debian":
            todo = f"Use the {CUDA12_LOCK} lock, or give a driver >= {min_driver} with {SET_DRIVER}"
        else:
            todo = f"Give a driver >= {min_driver}, or use the {CUDA12_LOCK} lock (CUDA 12 runs on >= 525)"
        raise StackError(
            "driver",
            f"torch {torch} needs CUDA {cuda_major}, which needs NVIDIA driver >= "
            f"{min_driver}; {driver.describe()}. {todo}.",
        )

    # transformers: inside vLLM's range; with the Transformers backend it must also know hunyuan_vl.
    lowest, below = pins_of.transformers
    if not in_range(transformers, lowest, below):
        why = ""
        if below and not in_range(TRANSFORMERS_HUNYUAN_VL, lowest, below):
            why = (
                f" The in-process transformers engine needs transformers >= {TRANSFORMERS_HUNYUAN_VL}, so it "
                f"cannot share a venv with vLLM {vllm}: this stack offers the vLLM engine only."
            )
        raise StackError(
            "transformers", f"vLLM {vllm} requires transformers {range_text(lowest, below)}, not {transformers}.{why}"
        )
    if hunyuan_vl == "transformers-backend" and not at_least(transformers, TRANSFORMERS_HUNYUAN_VL):
        raise StackError(
            "transformers",
            f"vLLM {vllm} runs HunYuanVL through its Transformers backend, which "
            f"needs transformers >= {TRANSFORMERS_HUNYUAN_VL} (the first with hunyuan_vl), not "
            f"{transformers}.",
        )
    engines = ("hunyuan-vllm",)
    warnings: list[str] = []
    if at_least(transformers, TRANSFORMERS_HUNYUAN_VL):
        engines += ("hunyuan-transformers",)
    else:
        warnings.append(
            f"transformers {transformers} (vLLM {vllm}'s range) has no hunyuan_vl: the GPU engine is "
            "vLLM only; hunyuan-transformers is not offered in this image."
        )

    # The image's Python must be one vLLM's wheel accepts.
    if at_least(python_version, pins_of.python_below):
        raise StackError(
            "python",
            f"vLLM {vllm} supports Python < {pins_of.python_below}, and the image's Python "
            f"is {python_version}; pick a newer vLLM or an older python_version.",
        )

    # Blackwell: open modules from a driver >= 570 (CUDA 12.8+, which every torch in TORCH_CUDA is built for).
    blackwell_gap = None
    if driver.major < BLACKWELL_MIN_DRIVER:
        blackwell_gap = (
            f"Blackwell GPUs (RTX 50xx, B200) need NVIDIA driver >= {BLACKWELL_MIN_DRIVER} with the "
            f"open kernel modules; {driver.describe()}"
        )
    elif "open" not in driver.flavours:
        blackwell_gap = (
            f"Blackwell GPUs (RTX 50xx, B200) need the open kernel modules, and the driver source has "
            f"only {', '.join(driver.flavours)} ones (add nvidia-open-kernel-dkms / "
            "nvidia-kernel-open-dkms)"
        )
    if blackwell_gap and need_blackwell:
        raise StackError(
            "driver",
            f"{blackwell_gap}. Give a driver >= {BLACKWELL_MIN_DRIVER} with its open modules "
            f"with {SET_DRIVER} (the {CUDA13_LOCK} lock needs >= 580).",
        )
    if blackwell_gap:
        warnings.append(f"{blackwell_gap}: such a card will boot into the CPU fallback.")

    stack = Stack(
        name=name,
        driver=driver,
        cuda=cuda,
        vllm=vllm,
        torch=torch,
        transformers=transformers,
        hunyuan_vl=hunyuan_vl,
        engines=engines,
        blackwell=blackwell_gap is None,
        warnings=warnings,
        wheel_sha256=dict(data.get("wheel_sha256") or {}) if name == data.get("name") else {},
    )
    _check_lock_claims(data, stack)
    return stack


def _check_lock_claims(data: dict, stack: Stack) -> None:
    """A lock's stated CUDA and engines must be what its pins resolve to (a stale lock is a bug, not a build)."""
    if not data or stack.name != data.get("name"):
        return
    if data.get("cuda") and str(data["cuda"]) != stack.cuda:
        raise StackError(
            "lock",
            f"{data['path']}: says cuda {data['cuda']} but torch {stack.torch} is built for "
            f"CUDA {stack.cuda}; fix the lock.",
        )
    if data.get("engines") and tuple(data["engines"]) != stack.engines:
        raise StackError(
            "lock",
            f"{data['path']}: says engines {', '.join(data['engines'])} but its pins give "
            f"{', '.join(stack.engines)}; fix the lock.",
        )


# Named in messages: the vLLM each shipped lock pins (kept in step with build/locks/ by a test).
VLLM_BY_LOCK = {CUDA12_LOCK: "0.18.1", CUDA13_LOCK: "0.26.0"}


# --- The build stage --------------------------------------------------------------------------------------------


def check_stack(ctx) -> str:
    """Build stage, first of the gpu profile: resolve and check the stack before a single byte is downloaded."""
    from imagebuilder.context import BuildError

    c = ctx.config
    try:
        stack = resolve_stack(
            driver_source=c.nvidia_driver_source,
            driver_version=c.nvidia_driver_version,
            lock=None if c.gpu_stack == "custom" else c.gpu_stack,
            torch=c.torch_version,
            vllm=c.vllm_version,
            transformers=c.transformers_version,
            python_version=c.python_version,
            need_blackwell=c.gpu_require_blackwell,
        )
    except StackError as e:
        raise BuildError(f"GPU stack: {e.piece}: {e}") from None
    if stack.driver.source == "run":  # resolve_stack understands it; the image builder installs .deb packages only
        raise BuildError(
            f"GPU stack: driver: {stack.driver.path} is NVIDIA's .run installer, which the image builder cannot "
            "install into the image; give a directory of NVIDIA's .deb packages with --set nvidia_driver_source=DIR"
        )
    ctx.info["stack"] = stack
    for warning in stack.warnings:
        print(f"    warning: {warning}", flush=True)
    return (
        f"{stack.name}: driver {stack.driver.version} ({'/'.join(stack.driver.flavours)}), CUDA {stack.cuda}, "
        f"vLLM {stack.vllm}, torch {stack.torch}, transformers {stack.transformers}"
    )
