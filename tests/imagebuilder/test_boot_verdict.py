"""What the boot test makes of the guest's selftest line (imagebuilder.boottest), without booting anything."""

from appliance.gpu import REASONS
from imagebuilder.boottest.capture import parse_marker
from imagebuilder.boottest.checks import NO_GPU_BANNER, gpu_fallback_problems

SCREEN = f"OCR appliance New scan {REASONS['no_card'][0]} OCR runs on the CPU meanwhile"


def test_gpu_image_without_a_card_passes_only_when_skipped_and_said():
    report = parse_marker("state=running failed=[] engine=cpu gpu=[nvidia:exec-condition vllm:exec-condition]")
    assert gpu_fallback_problems(report, SCREEN) == []

    failed = parse_marker("engine=cpu gpu=[nvidia:exit-code vllm:exec-condition]")
    assert gpu_fallback_problems(failed, SCREEN) == [
        "nvidia unit: Result=exit-code, expected exec-condition (skipped without a GPU)"
    ]
    silent = gpu_fallback_problems(report, "OCR appliance New scan")
    assert len(silent) == 1 and "does not say why" in silent[0]
    wrong_engine = parse_marker("engine=none gpu=[nvidia:exec-condition vllm:exec-condition]")
    assert gpu_fallback_problems(wrong_engine, SCREEN) == ["engine none, expected the CPU fallback (cpu)"]
    # with the CPU model the fallback is llama.cpp (every task), and rapidocr alone is then wrong
    llama = "engine=hunyuan-llamacpp gpu=[nvidia:exec-condition vllm:exec-condition] llama=active"
    assert gpu_fallback_problems(parse_marker(llama), SCREEN) == []
    lost = parse_marker(llama.replace("hunyuan-llamacpp", "cpu"))
    assert gpu_fallback_problems(lost, SCREEN) == ["engine cpu, expected the CPU fallback (hunyuan-llamacpp)"]


def test_cpu_image_has_no_gpu_checks():
    assert gpu_fallback_problems(parse_marker("state=running engine=cpu gpu=[]"), "") == []


def test_banner_words_are_the_reason_the_ui_shows():
    assert REASONS["no_card"][0].startswith(NO_GPU_BANNER)


def test_grub_keys_reach_the_linux_line_of_each_entry(tmp_path):
    """The debug shell's argument is typed at the end of the entry's `linux` line (GRUB's editor: `setparams`, an
    empty line, the entry's own commands, then `linux`; checked on screen in QEMU for "normal" and "safe")."""
    from imagebuilder.boottest.vm import DEBUG_SHELL_ARG, Vm

    typed = [bytes([c]) for c in DEBUG_SHELL_ARG.encode()]
    normal = Vm(disk=tmp_path / "x.iso", mode="bios-cd", dir=tmp_path, debug_shell=True)
    assert normal.grub_keys() == [b"e", b"\x0e", b"\x0e", b"\x05", *typed, b"\x18", b"\x18", b"\x18"]
    safe = Vm(disk=tmp_path / "x.iso", mode="bios-cd", dir=tmp_path, entry="safe", debug_shell=True)
    assert safe.grub_keys()[:6] == [b"\x0e", b"\x0e", b"e", b"\x0e", b"\x0e", b"\x0e"]
    plain = Vm(disk=tmp_path / "x.iso", mode="bios-cd", dir=tmp_path, entry="toram")
    assert plain.grub_keys() == [b"\x0e", b"\r", b"\r", b"\r"]


def test_the_kiosk_is_back_only_without_the_restarting_banner():
    from imagebuilder.boottest.checks import KIOSK_RECONNECTING, KIOSK_TEXT, kiosk_back
    from webui.i18n import MESSAGES

    assert KIOSK_RECONNECTING in MESSAGES["reconnecting"][0]  # the words the kiosk really shows
    start = " ".join(KIOSK_TEXT) + " 1. Choose a file"
    assert kiosk_back(start)
    assert not kiosk_back(start + "\nThe OCR service is restarting; this page comes back by itself in a moment.")
    assert not kiosk_back("")
