"""The boot test's persistence checks for a stick written raw with the ISO (imagebuilder/boottest/checks.py) against
the real web app served over HTTP, as the harness reaches the guest through its port forward: the offer, the
confirmation through the page's own form (session cookie, CSRF token, LAN token), the root side making the partition
on a loop-attached stick (appliance.persistence.update, run here as appliance-persistence.path would start it), and a
result found in History on the next "boot"."""

from __future__ import annotations

import threading

import pytest
from persistence_sticks import needs_loop
from werkzeug.serving import make_server

from appliance import persistence
from appliance.messages import Text
from imagebuilder.boottest.checks import (
    check_persistence_create,
    check_persistence_kept,
    check_persistence_refused,
)
from imagebuilder.boottest.vm import Vm

TOKEN = "boot-test-token"


@pytest.fixture
def guest(app, tmp_path):
    """(vm, state file, request file): the app in RAM (no persistence yet), served on a loopback port; `vm` is the
    harness's view of it (no QEMU: only its port is used)."""
    data = app.config["DATA_DIR"]
    (tmp_path / "mounts").write_text(f"/dev/sdb1 /run/live/medium iso9660 ro 0 0\ntmpfs {data} tmpfs rw 0 0\n")
    run = tmp_path / "run"
    app.config.update(
        LAN_TOKEN=TOKEN,
        MOUNTS_FILE=str(tmp_path / "mounts"),
        MEDIUM_MARKER=str(tmp_path / "no-marker"),
        PERSISTENCE_STATE=str(run / "persistence.json"),
        PERSISTENCE_REQUEST=str(run / "requests" / "persistence"),
    )
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    vm = Vm(disk=tmp_path / "none.iso", mode="bios-raw", dir=tmp_path / "vm", port=server.server_port)
    yield vm, run / "persistence.json", run / "requests" / "persistence"
    server.shutdown()
    thread.join()


@needs_loop
def test_first_boot_of_a_raw_stick_makes_persistent_storage_from_the_page(guest, stick):
    vm, state_file, request = guest
    s = stick()
    persistence.update(state_file, request, **s.where)  # at boot
    stop = threading.Event()

    def unit():  # appliance-persistence.path -> .service, as root
        while not stop.wait(0.2):
            if request.exists():
                persistence.update(state_file, request, **s.where)

    worker = threading.Thread(target=unit, daemon=True)
    worker.start()
    try:
        result = {}
        assert check_persistence_create(vm, TOKEN, result) == []
    finally:
        stop.set()
        worker.join()
    assert result["persistence_before"]["state"] == "possible"
    assert result["persistence_after"] == {"working": False, "state": "exists", "job": "done", "step": ""}
    assert persistence.status(**s.where).state == "exists"
    # Made: no second offer on this boot, and a stick where it exists is not "refused".
    assert check_persistence_create(vm, TOKEN, {}) != []
    assert check_persistence_refused(vm, TOKEN, {}) == []


def test_a_stick_where_it_cannot_work_is_not_offered(guest):
    vm, state_file, _ = guest
    persistence.write_state(
        state_file, persistence.State(persistence.Status("unavailable", Text("persist_iso_file")).to_dict())
    )
    result = {}
    assert check_persistence_refused(vm, TOKEN, result) == []
    assert result["persistence_state"] == "unavailable"
    text = Text("persist_possible", size=1016, disk="/dev/sdb")
    persistence.write_state(state_file, persistence.State(persistence.Status("possible", text).to_dict()))
    assert check_persistence_refused(vm, TOKEN, {}) != []


def test_later_boots_find_the_result_the_boot_before_made(guest):
    vm, _, _ = guest
    memory = {"made": True}
    first = {}
    assert check_persistence_kept(vm, TOKEN, {"boots": "1"}, first, memory) == []
    made = memory["job"]
    assert made and "kept_job" not in first  # nothing to find on the first boot with persistence
    second = {}
    assert check_persistence_kept(vm, TOKEN, {"boots": "2"}, second, memory) == []
    assert second["kept_job"] == {"id": made, "state": "done", "in_history": True}
    # A boot count that did not go up: /srv/ocr was not on the stick.
    problems = check_persistence_kept(vm, TOKEN, {"boots": "2"}, {}, memory)
    assert problems and "not persistent" in problems[0]
