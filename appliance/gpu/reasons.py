"""The UI's one sentence saying why OCR runs on the CPU on a gpu image, in English (logs, systemd) and Chinese.

The checks that pick a sentence are appliance.gpu.fallback's (and sizing's, for a card with too little memory).
"""

from __future__ import annotations

# Why OCR runs on the CPU, one sentence each, in English (logs, systemd) and Chinese; webui.i18n adds them to the UI's
# catalogue as gpu_<key>. Every reason is followed by one of MEANWHILE.
REASONS = {
    "no_card": ("No NVIDIA graphics card was found.", "未找到 NVIDIA 显卡。"),
    "cpu_image": (
        "This image has no GPU stack (it was built with the cpu profile).",
        "本系统镜像不含 GPU 组件（以 cpu 配置构建）。",
    ),
    "too_old": (
        "This NVIDIA card ({pci_id}, {generation}) is too old for the model server, which needs a Volta or newer "
        "GPU.",
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
}
# The sentence after the reason: what OCR does meanwhile, with or without the image's CPU model (its GGUF files).
MEANWHILE = {
    "cpu_meanwhile": (
        "OCR runs on the CPU meanwhile: slower, and only text spotting and plain text.",
        "在此期间由 CPU 识别：速度较慢，且仅支持文字定位和纯文本。",
    ),
    "cpu_model_meanwhile": (
        "OCR runs on the CPU meanwhile: every task, with the image's CPU model, but slower.",
        "在此期间由 CPU 识别：借助镜像自带的 CPU 模型支持所有任务，但速度较慢。",
    ),
}


class Reason(str):
    """A reason from REASONS as English text (what logs and systemd show), keeping its key and values so the UI
    can say it in its own language."""

    key: str
    values: dict
    meanwhile: str  # a MEANWHILE key

    def __new__(cls, key: str, meanwhile: str = "cpu_meanwhile", **values):
        text = f"{REASONS[key][0].format(**values)} {MEANWHILE[meanwhile][0]}"
        reason = super().__new__(cls, text)
        reason.key, reason.values, reason.meanwhile = key, values, meanwhile
        return reason

    def with_cpu_model(self) -> Reason:
        """The same reason on an image that carries the CPU model: every task still works, on the CPU."""
        return Reason(self.key, "cpu_model_meanwhile", **self.values)
