"""The `appliance` command as a user runs it: a real process, the real CPU engine, real images."""

import json
import subprocess
import sys

import pytest
from PIL import Image, ImageDraw, ImageFont

FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"


def appliance(*args, **kw):
    return subprocess.run(
        [sys.executable, "-m", "appliance", *args], capture_output=True, text=True, timeout=300, **kw
    )


def draw_lines(lines, size=(900, 260), font_size=40):
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.truetype(FONT, font_size)
    for i, line in enumerate(lines):
        draw.text((40, 40 + i * 80), line, fill="black", font=font)
    return image


@pytest.fixture(scope="module")
def receipt(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "receipt.jpg"
    draw_lines(["RECEIPT 2026-11-21", "TOTAL 12.50"]).save(path, quality=92)
    return path


def test_spotting_json_gives_lines_with_pixel_boxes(receipt):
    run = appliance("ocr", str(receipt), "--task", "spotting", "--format", "json", "--engine", "cpu")
    assert run.returncode == 0, run.stderr
    doc = json.loads(run.stdout)
    texts = [b["text"] for b in doc["pages"][0]["blocks"]]
    assert texts == ["RECEIPT 2026-11-21", "TOTAL 12.50"]
    x1, y1, x2, y2 = doc["pages"][0]["blocks"][1]["box"]
    assert 20 <= x1 <= 50 and 100 <= y1 <= 135 and 250 <= x2 <= 400 and 150 <= y2 <= 185
    assert doc["text"] == "RECEIPT 2026-11-21\nTOTAL 12.50"
    assert doc["engine"]["name"] == "cpu" and "load" in doc["timings"]


def test_several_files_one_json_line_each_and_a_bad_file_does_not_stop_the_others(receipt, tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    second = tmp_path / "second.png"
    draw_lines(["Second file"]).save(second)
    run = appliance("ocr", str(receipt), str(empty), str(second), "--format", "json", "--engine", "cpu")
    assert run.returncode == 1
    docs = [json.loads(line) for line in run.stdout.splitlines()]
    assert [d["source"] for d in docs] == [str(receipt), str(second)]
    assert docs[1]["text"] == "Second file"
    assert "load" in docs[0]["timings"] and "load" not in docs[1]["timings"]  # the engine loaded once
    assert f"{empty}: empty file" in run.stderr


def test_txt_output_and_multi_page_progress_on_stderr(tmp_path):
    pdf = tmp_path / "two.pdf"
    pages = [draw_lines(["First page"]), draw_lines(["Second page"])]
    pages[0].save(pdf, save_all=True, append_images=pages[1:], resolution=100)
    run = appliance("ocr", str(pdf), "--engine", "cpu")
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["First", "page", "Second", "page"]
    assert "page 2/2" in run.stderr


def test_task_the_cpu_engine_cannot_do_names_the_task_and_the_need(receipt):
    run = appliance("ocr", str(receipt), "--task", "doc_parser", "--engine", "cpu")
    assert run.returncode == 1
    assert "task 'doc'" in run.stderr and "HunyuanOCR model" in run.stderr
    assert run.stdout == ""


def test_usage_errors_exit_2():
    assert appliance("ocr", "x.png", "--task", "nonsense").returncode == 2
    assert "needs field names" in appliance("ocr", "x.png", "--task", "extract").stderr


def test_doctor_says_which_engine_and_why():
    run = appliance("doctor")
    assert run.returncode == 0
    assert "engine:   cpu (no NVIDIA kernel driver loaded" in run.stdout


def test_build_refuses_bad_profiles_and_settings_before_doing_anything(tmp_path):
    run = appliance("build", "--profile", "nosuch", "--out", str(tmp_path / "out"))
    assert run.returncode == 2 and "profile 'nosuch' not found" in run.stderr
    run = appliance("build", "--set", "colour=blue", "--out", str(tmp_path / "out"))
    assert run.returncode == 2 and "colour" in run.stderr
    assert not (tmp_path / "out").exists()


def test_verify_reproducible_refuses_bad_settings_before_building(tmp_path):
    run = appliance("build", "--verify-reproducible", "--set", "colour=blue", "--out", str(tmp_path / "twice"))
    assert run.returncode == 2 and "colour" in run.stderr and not (tmp_path / "twice").exists()


def test_build_model_version_flag_reaches_the_model_check(tmp_path, tiny_model_dir):
    # The tiny snapshot has no v1.0/ beside it, so the builder cannot tell 1.0 from 1.5 and asks for the flag;
    # the flag saying 1.5 for a repository's v1.0/ directory is refused. Both before any download.
    out = ["--out", str(tmp_path / "out")]
    run = appliance("build", "--profile", "gpu", "--model", str(tiny_model_dir), "--accept-model-license", *out)
    assert run.returncode == 2 and "--model-version 1.0 or --model-version 1.5" in run.stderr
    (tmp_path / "v1.0").symlink_to(tiny_model_dir)
    run = appliance(
        "build",
        "--profile",
        "gpu",
        "--model",
        str(tmp_path / "v1.0"),
        "--model-version",
        "1.5",
        "--accept-model-license",
        *out,
    )
    assert run.returncode == 2 and "(HunyuanOCR 1.0), not 1.5" in run.stderr
    assert not (tmp_path / "out").exists()


def test_the_images_cli_works_without_the_builder():
    # The image ships appliance/ and webui/ without imagebuilder/ (the builder stays on the build host): its web unit
    # runs `appliance serve`, so the CLI must not import the builder until a host-tools command runs, and those
    # commands say in one line that the builder is not there.
    no_builder = "import sys; sys.modules['imagebuilder'] = None; from appliance.cli import build_parser, main; "
    code = no_builder + "print(build_parser().parse_args(['serve', '--port', '8123']).port)"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and run.stdout.strip() == "8123", run.stderr
    for args in (["build"], ["boot-test", "x.iso"], ["doctor", "--missing-packages"]):
        run = subprocess.run(
            [sys.executable, "-c", no_builder + f"sys.exit(main({args!r}))"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert run.returncode == 2 and run.stdout == "", (args, run.stdout, run.stderr)
        assert run.stderr.startswith(f"appliance: {args[0]}") and "image builder is not installed" in run.stderr
        assert len(run.stderr.splitlines()) == 1, run.stderr
    run = subprocess.run(
        [sys.executable, "-c", no_builder + "sys.exit(main(['doctor']))"], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0 and "engine:" in run.stdout and "build host" not in run.stdout, run.stderr


def test_doctor_lists_the_build_host_checks():
    run = appliance("doctor")
    assert "build host" in run.stdout and "mmdebstrap" in run.stdout


def test_persistence_says_why_not_off_the_appliance_and_creates_nothing():
    """On a machine that did not boot the appliance's medium: status says so (as JSON too), create refuses."""
    run = appliance("persistence", "status")
    assert run.returncode == 0 and run.stdout == "unavailable: not running from the appliance's boot medium\n"
    state = json.loads(appliance("persistence", "status", "--json").stdout)
    assert state["state"] == "unavailable" and state["message"]["code"] == "persist_not_live"
    run = appliance("persistence", "create", "--yes")
    assert run.returncode == 1 and "not running from the appliance's boot medium" in run.stderr
