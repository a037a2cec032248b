"""The GPU on the booted appliance: what card is there, which NVIDIA modules to load, how to size vLLM, and why not.

Runs inside the image at boot, before any NVIDIA tool works (the driver may not even be loaded), so everything comes
from sysfs and efivars; the sysfs root is a parameter so tests use a fake tree. What the image was built with (driver
version, module flavours, whether the modules are signed) comes from /etc/appliance/gpu-stack.json, written by the
builder from appliance.build.stack.Stack.as_dict() plus "modules_signed".

    python3 -m appliance.gpu flavour   # prints open|proprietary for the first NVIDIA GPU (exit 1: none usable)
    python3 -m appliance.gpu status    # JSON: cards, flavour, Secure Boot, fallback reason (the UI's sentence)
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

SYSFS = Path("/sys")
STACK_INFO = Path("/etc/appliance/gpu-stack.json")
# vLLM compile caches the build bundled (--set vllm_compile_cache=DIR), one folder per GPU architecture (sm_89 ...):
# a card with one runs vLLM compiled (CUDA graphs, faster pages); any other card runs it eager (no compile at boot).
COMPILE_CACHE = Path("/usr/share/appliance/vllm-compile-cache")
NVIDIA_VENDOR = 0x10DE
DISPLAY_CLASS = (
    0x03  # PCI base class "display controller" (VGA 0x0300, 3D 0x0302); skips the card's audio/USB functions
)
GIB = 2**30
FLAVOURS = ("open", "proprietary")

# PCI device ID -> generation, the module flavour it needs or prefers, and whether vLLM can run on it.
# Source of the ranges: NVIDIA's open-gpu-kernel-modules README (550.40.82) lists every GPU the open modules
# support, all Turing or later, from 0x1E02 (TITAN RTX) up to 0x28F8 (Ada); Blackwell parts come after that
# (B200 0x2901, RTX 50xx 0x2B80-0x2DFF); Volta (GV100) is 0x1D80-0x1DFF and Pascal/Maxwell lie below it, per the
# PCI ID database. NVIDIA allocates device IDs in order of generation, so ranges are enough; not checked on hardware.
# Open modules: required on Blackwell, unsupported before Turing, NVIDIA's recommendation from Turing on (since R560);
# an image whose driver has only the proprietary flavour (Debian's 550) still drives Turing..Hopper with it.
# vLLM needs compute capability >= 7.0 (Volta); CUDA 13 drops Volta, so Volta runs only on a CUDA 12 stack.
GENERATIONS = (  # (first id, first id past the range, generation, flavour, runs vLLM)
    (0x0000, 0x1D80, "Maxwell/Pascal or older", "proprietary", False),
    (0x1D80, 0x1E00, "Volta", "proprietary", True),
    (0x1E00, 0x2900, "Turing/Ampere/Ada/Hopper", "open", True),
    (0x2900, 0x10000, "Blackwell", "open", True),
)
OPEN_REQUIRED = {"Blackwell"}
BLACKWELL_MIN_DRIVER = 570
CUDA13_DROPS = {"Volta"}

# vLLM sizing. The vendor's figures (1.0: ~20 GB, 1.5: >= 24 GB) are vLLM's default reservation of 90% of a 24 GB
# card, mostly KV cache; the model itself is ~1B parameters (~2 GiB of bf16 weights) and an appliance serves one
# page at a time, so far less fits. The minimum keeps weights + CUDA context + vision activations at the pixel cap
# + a KV cache for one full-length request, with room; 1.5 asks ~1.2x more than 1.0 in the vendor's docs, so
# its minimum is scaled the same way. Below the minimum the CPU engine serves (a reason, not a crash at load).
MIN_GPU_MEMORY = {"1.0": 8 * GIB, "1.5": 10 * GIB}
# The display (Xorg + the kiosk browser) may share the card; keep this much out of vLLM's reach.
HEADROOM = int(1.5 * GIB)
MAX_UTILIZATION = 0.90  # vLLM's default; more leaves nothing for the desktop
# (card memory at least, max model length, image pixel cap). Image tokens = pixels / 32**2 (patch 16, merge 2):
# 2048*2048 -> 4096 tokens + up to ~12k answer tokens in 16384; 1280*1280 -> 1600 + ~6k in 8192. The cap is what
# the engines pass to images.cap_pixels(); an uncapped 300-dpi page ran out of memory even on 141 GB.
TIERS = (
    (16 * GIB, 16384, 2048 * 2048),
    (12 * GIB, 12288, 1792 * 1792),
    (0, 8192, 1280 * 1280),
)

# Why OCR runs on the CPU, one sentence each, in English (logs, systemd) and Chinese; webui.i18n adds them to the UI's
# catalogue as gpu_<key>. Every reason is followed by "cpu_meanwhile".
REASONS = {
    "no_card": ("No NVIDIA graphics card was found.", "未找到 NVIDIA 显卡。"),
    "cpu_image": (
        "This image has no GPU stack (it was built with the cpu profile).",
        "本系统镜像不含 GPU 组件（以 cpu 配置构建）。",
    ),
    "too_old": (
        "This NVIDIA card ({pci_id}, {generation}) is too old for the model server, which needs a Volta or newer GPU.",
        "此 NVIDIA 显卡（{pci_id}，{generation}）太旧，模型服务需要 Volta 或更新架构的 GPU。",
    ),
    "needs_open": (
        "This NVIDIA card ({pci_id}, {generation}) needs the open kernel modules of NVIDIA driver {min_driver} or "
        "newer, and this image has driver {version} with {flavours} modules: rebuild it with the cuda13-user-driver "
        "stack.",
        "此 NVIDIA 显卡（{pci_id}，{generation}）需要 {min_driver} 或更新版本驱动的开源内核模块，而本镜像的驱动是 "
        "{version}（{flavours} 模块）：请用 cuda13-user-driver 组合重新构建镜像。",
    ),
    "needs_proprietary": (
        "This NVIDIA card ({pci_id}, {generation}) needs the proprietary kernel modules, which this image does not "
        "have.",
        "此 NVIDIA 显卡（{pci_id}，{generation}）需要专有内核模块，本镜像中没有。",
    ),
    "no_cuda13": (
        "This NVIDIA card ({pci_id}, {generation}) is not supported by CUDA 13, which this image's stack uses: "
        "rebuild it with the cuda12-debian-driver stack.",
        "CUDA 13 不支持此 NVIDIA 显卡（{pci_id}，{generation}），而本镜像使用 CUDA 13：请用 cuda12-debian-driver "
        "组合重新构建镜像。",
    ),
    "secure_boot_site_key": (
        "Secure Boot is on and the NVIDIA driver did not load: this image's modules are signed with a site key that "
        "this PC has not enrolled yet; enrol it with MOK (mokutil --import) or turn Secure Boot off in the firmware "
        "setup.",
        "安全启动已开启，NVIDIA 驱动未能加载：本镜像的驱动模块由站点密钥签名，而这台电脑尚未登记该密钥；请用 MOK "
        "登记（mokutil --import），或在固件设置中关闭安全启动。",
    ),
    "secure_boot_unsigned": (
        "Secure Boot is on and this image's NVIDIA driver modules are not signed with a key this PC trusts, so the "
        "GPU driver cannot load: turn Secure Boot off in the firmware setup, or rebuild the image with module "
        "signing and enrol the key with MOK.",
        "安全启动已开启，而本镜像的 NVIDIA 驱动模块没有用这台电脑信任的密钥签名，GPU 驱动无法加载：请在固件设置中关闭"
        "安全启动，或启用模块签名重新构建镜像并用 MOK 登记密钥。",
    ),
    "nouveau": (
        "The nouveau driver took the NVIDIA card ({pci_id}) instead of NVIDIA's, which this image should have "
        "blacklisted.",
        "nouveau 驱动占用了 NVIDIA 显卡（{pci_id}），而不是 NVIDIA 官方驱动；本镜像本应禁用 nouveau。",
    ),
    "driver_not_loaded": (
        "The NVIDIA driver did not load for the card ({pci_id}); the system log says why (journalctl -k).",
        "NVIDIA 驱动未能为显卡（{pci_id}）加载；原因见系统日志（journalctl -k）。",
    ),
    "too_little_memory": (
        "This NVIDIA card has {memory_gib} GiB of memory and HunyuanOCR {version} needs at least {minimum_gib} GiB "
        "on the GPU.",
        "此 NVIDIA 显卡只有 {memory_gib} GiB 显存，而 HunyuanOCR {version} 至少需要 {minimum_gib} GiB。",
    ),
    "cpu_meanwhile": (
        "OCR runs on the CPU meanwhile: text spotting and plain text only; the other tasks need the GPU model.",
        "在此期间由 CPU 识别：仅支持文字定位和纯文本，其他任务需要 GPU 模型。",
    ),
}


class Reason(str):
    """A reason from REASONS as English text (what logs and systemd show), keeping its key and values so the UI
    can say it in its own language."""

    key: str
    values: dict

    def __new__(cls, key: str, **values):
        text = f"{REASONS[key][0].format(**values)} {REASONS['cpu_meanwhile'][0]}"
        reason = super().__new__(cls, text)
        reason.key, reason.values = key, values
        return reason
SECURE_BOOT_VAR = "SecureBoot-8be4df61-93ca-11d2-aa0d-e0b9ac8e1d6c"


@dataclass(frozen=True)
class Gpu:
    address: str  # PCI address, 0000:01:00.0
    device_id: int
    pci_class: int
    driver: str | None  # the kernel driver bound to it now: nvidia, nouveau, or None

    @property
    def pci_id(self) -> str:
        return f"10de:{self.device_id:04x}"

    @property
    def generation(self) -> str:
        return _generation(self.device_id)[2]


def _read_hex(path: Path) -> int | None:
    try:
        return int(path.read_text().strip(), 16)
    except (OSError, ValueError):
        return None


def detect(sysfs: str | Path = SYSFS) -> list[Gpu]:
    """NVIDIA display controllers on the PCI bus, in address order; no tool or driver needed."""
    gpus = []
    for dev in sorted((Path(sysfs) / "bus" / "pci" / "devices").glob("*")):
        vendor, device, pci_class = (_read_hex(dev / n) for n in ("vendor", "device", "class"))
        if vendor != NVIDIA_VENDOR or device is None or pci_class is None or pci_class >> 16 != DISPLAY_CLASS:
            continue
        driver_link = dev / "driver"
        driver = Path(str(driver_link.readlink())).name if driver_link.is_symlink() else None
        gpus.append(Gpu(dev.name, device, pci_class, driver))
    return gpus


def _generation(device_id: int) -> tuple:
    return next(row for row in GENERATIONS if row[0] <= device_id < row[1])


def module_flavour(pci_device_id: int, available: tuple[str, ...] = FLAVOURS) -> str | None:
    """The NVIDIA kernel module flavour to load for this GPU, or None when none of `available` drives it."""
    _, _, generation, preferred, _ = _generation(pci_device_id)
    if preferred in available:
        return preferred
    if generation in OPEN_REQUIRED or preferred == "proprietary":
        return None  # Blackwell without open modules; pre-Turing without proprietary ones
    return "proprietary" if "proprietary" in available else None


def vllm_settings(gpu_memory_bytes: int, model_version: str = "1.5") -> dict:
    """vLLM server settings for a card with this much memory; NotEnoughGpuMemory (the UI's sentence) below minimum."""
    minimum = MIN_GPU_MEMORY.get(model_version, max(MIN_GPU_MEMORY.values()))
    if gpu_memory_bytes < minimum:
        raise NotEnoughGpuMemory(Reason("too_little_memory", memory_gib=f"{gpu_memory_bytes / GIB:.1f}",
                                        version=model_version, minimum_gib=f"{minimum / GIB:.0f}"))
    utilization = min(MAX_UTILIZATION, (gpu_memory_bytes - HEADROOM) / gpu_memory_bytes)
    _, max_model_len, max_pixels = next(t for t in TIERS if gpu_memory_bytes >= t[0])
    return {
        # Rounded down: vLLM takes the fraction of the whole card, and must never eat the display's share.
        "gpu_memory_utilization": int(utilization * 100) / 100,
        "max_model_len": max_model_len,
        "max_pixels": max_pixels,
    }


class NotEnoughGpuMemory(ValueError):
    """The card is too small for the model: the message is the UI's sentence (`reason`, a Reason)."""

    def __init__(self, reason: Reason):
        self.reason = reason
        super().__init__(reason)


def secure_boot_state(sysfs: str | Path = SYSFS) -> str:
    """'on', 'off', 'not-uefi' (legacy BIOS boot: no Secure Boot) or 'unknown' (UEFI, variable unreadable)."""
    efi = Path(sysfs) / "firmware" / "efi"
    if not efi.is_dir():
        return "not-uefi"
    try:
        data = (efi / "efivars" / SECURE_BOOT_VAR).read_bytes()
    except OSError:
        return "unknown"
    # efivarfs: 4 bytes of attributes, then the value: one byte, 1 = enforcing.
    if len(data) < 5:
        return "unknown"
    return "on" if data[4] == 1 else "off"


def secure_boot_message(state: str, modules_signed: bool) -> Reason | None:
    """The UI's sentence when Secure Boot stops the NVIDIA modules from loading; None when it does not."""
    if state != "on":
        return None
    return Reason("secure_boot_site_key" if modules_signed else "secure_boot_unsigned")


def load_stack_info(path: str | Path = STACK_INFO) -> dict:
    """What the image's GPU stack is (the builder's gpu-stack.json); {} on an image without one (cpu profile)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def driver_loaded(gpu: Gpu, sysfs: str | Path = SYSFS) -> bool:
    return gpu.driver == "nvidia" and (Path(sysfs) / "module" / "nvidia").is_dir()


def _driver_major(stack: dict) -> int | None:
    try:
        return int(str(stack["driver"]["version"]).split(".")[0])
    except (KeyError, TypeError, ValueError):
        return None


def unsupported_reason(gpu: Gpu, stack: dict) -> Reason | None:
    """Why this image cannot drive this card at all (whatever happens at boot), or None."""
    _, _, generation, _, runs_vllm = _generation(gpu.device_id)
    card = {"pci_id": gpu.pci_id, "generation": generation}
    if not runs_vllm:
        return Reason("too_old", **card)
    flavours = tuple(stack.get("driver", {}).get("flavours") or FLAVOURS)
    major = _driver_major(stack)
    version = stack.get("driver", {}).get("version", "unknown")
    if generation in OPEN_REQUIRED and (
        module_flavour(gpu.device_id, flavours) is None or (major is not None and major < BLACKWELL_MIN_DRIVER)
    ):
        return Reason("needs_open", **card, min_driver=BLACKWELL_MIN_DRIVER, version=version,
                      flavours="/".join(flavours))
    if module_flavour(gpu.device_id, flavours) is None:
        return Reason("needs_proprietary", **card)
    if generation in CUDA13_DROPS and str(stack.get("cuda", "")).startswith("13"):
        return Reason("no_cuda13", **card)
    return None


def fallback_reason(
    sysfs: str | Path = SYSFS,
    stack: dict | None = None,
    gpu_memory_bytes: int | None = None,
    model_version: str = "1.5",
) -> Reason | None:
    """One sentence for the UI saying why OCR runs on the CPU, or None when the GPU can serve the model.

    Checked in the order a person would fix things: no card, a card this image cannot drive, Secure Boot refusing
    the modules, the driver not loaded, too little memory (only when the memory is known: nvidia-smi needs the
    driver).
    """
    stack = load_stack_info() if stack is None else stack
    gpus = detect(sysfs)
    if not gpus:
        return Reason("no_card")
    if not stack:
        return Reason("cpu_image")
    gpu = gpus[0]
    reason = unsupported_reason(gpu, stack)
    if reason:
        return reason
    if not driver_loaded(gpu, sysfs):
        blocked = secure_boot_message(secure_boot_state(sysfs), bool(stack.get("modules_signed")))
        if blocked:
            return blocked
        if gpu.driver == "nouveau":
            return Reason("nouveau", pci_id=gpu.pci_id)
        return Reason("driver_not_loaded", pci_id=gpu.pci_id)
    if gpu_memory_bytes is not None:
        try:
            vllm_settings(gpu_memory_bytes, model_version)
        except NotEnoughGpuMemory as e:
            return e.reason
    return None


def smi_query(field: str) -> str | None:
    """One field of the first GPU from nvidia-smi (only once the driver is loaded), or None."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        return None
    try:
        out = subprocess.run([smi, f"--query-gpu={field}", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=20, check=True).stdout
        return out.splitlines()[0].strip() or None
    except (OSError, subprocess.SubprocessError, IndexError):
        return None


def gpu_memory_bytes() -> int | None:
    """The first GPU's memory, or None."""
    try:
        return int(smi_query("memory.total")) * 2**20  # MiB
    except (TypeError, ValueError):
        return None


def compile_cache_for(compute_capability: str | None, root: str | Path = COMPILE_CACHE) -> Path | None:
    """The image's vLLM compile cache for a card of this compute capability ("8.9" -> root/sm_89), if it has one."""
    if not compute_capability:
        return None
    cache = Path(root) / f"sm_{compute_capability.replace('.', '')}"
    return cache if cache.is_dir() and any(cache.iterdir()) else None


def status(sysfs: str | Path = SYSFS, stack: dict | None = None, model_version: str = "1.5") -> dict:
    stack = load_stack_info() if stack is None else stack
    gpus = detect(sysfs)
    flavours = tuple(stack.get("driver", {}).get("flavours") or FLAVOURS)
    memory = gpu_memory_bytes() if gpus and driver_loaded(gpus[0], sysfs) else None
    reason = fallback_reason(sysfs, stack, memory, model_version)
    return {
        "gpus": [
            {"address": g.address, "pci_id": g.pci_id, "generation": g.generation, "driver": g.driver} for g in gpus
        ],
        "flavour": module_flavour(gpus[0].device_id, flavours) if gpus else None,
        "secure_boot": secure_boot_state(sysfs),
        "memory_bytes": memory,
        "vllm": vllm_settings(memory, model_version) if memory and reason is None else None,
        "fallback_reason": reason,
    }


IMAGE_MODEL_DIR = Path("/usr/share/appliance/model")  # where the gpu image keeps the weights (appliance.build.model)


def model_version(model_dir: str | Path = IMAGE_MODEL_DIR) -> str:
    """The model's version from its appliance-model.json (1.0 when the directory does not say)."""
    from appliance.ocr.engines.hunyuan import model_version as version_of

    return version_of(model_dir)


def banner(sysfs: str | Path = SYSFS, stack: dict | None = None,
           model_dir: str | Path = IMAGE_MODEL_DIR) -> Reason | None:
    """The UI's one sentence on a GPU image when OCR runs on the CPU; None on a cpu image or when the GPU serves."""
    stack = load_stack_info() if stack is None else stack
    if not stack:
        return None  # a cpu image: the CPU engine is the design, not a fallback
    gpus = detect(sysfs)
    memory = gpu_memory_bytes() if gpus and driver_loaded(gpus[0], sysfs) else None
    return fallback_reason(sysfs, stack, memory, model_version(model_dir))


def main(argv: list[str] | None = None) -> int:
    """Exit 1 (with the reason on stderr) is what systemd's ExecCondition reads as "skip this unit", not a failure."""
    args = sys.argv[1:] if argv is None else argv
    command = args[0] if args else "status"
    if command == "flavour":  # appliance-nvidia.service: which modules to load
        gpus = detect()
        flavours = tuple(load_stack_info().get("driver", {}).get("flavours") or FLAVOURS)
        flavour = module_flavour(gpus[0].device_id, flavours) if gpus else None
        if flavour:
            print(flavour)
            return 0
        print(fallback_reason() or "no NVIDIA module flavour drives this card", file=sys.stderr)
        return 1
    if command == "can-serve":  # appliance-vllm.service: a supported card, driver loaded, enough memory
        reason = banner()
        if reason:
            print(reason, file=sys.stderr)
            return 1
        return 0
    if command == "status":
        print(json.dumps(status(model_version=model_version()), indent=1))
        return 0
    print("usage: python3 -m appliance.gpu [flavour|can-serve|status]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
