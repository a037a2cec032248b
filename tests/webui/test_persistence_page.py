"""The persistence offer in the kiosk: shown (zh/en) only when the root unit's state says it can be done; the
confirmation reaches the root side as a request, and the root side (appliance.persistence.update, called here as
the unit would) makes the partition on a loop-attached stick (tests/persistence_sticks.py)."""

from __future__ import annotations

import pytest
from conftest import csrf
from persistence_sticks import needs_loop

from appliance import persistence
from appliance.messages import Text, say

EN, ZH = {"Accept-Language": "en"}, {"Accept-Language": "zh"}


@pytest.fixture
def paths(app, tmp_path):
    """The app in RAM (no persistence, as a raw-written stick boots), with its own state and request files."""
    data = app.config["DATA_DIR"]
    (tmp_path / "mounts").write_text(f"/dev/sdb1 /run/live/medium iso9660 ro 0 0\ntmpfs {data} tmpfs rw 0 0\n")
    app.config.update(
        MOUNTS_FILE=str(tmp_path / "mounts"),
        MEDIUM_MARKER=str(tmp_path / "no-marker"),
        PERSISTENCE_STATE=str(tmp_path / "run" / "persistence.json"),
        PERSISTENCE_REQUEST=str(tmp_path / "run" / "requests" / "persistence"),
    )
    return tmp_path / "run" / "persistence.json", tmp_path / "run" / "requests" / "persistence"


def page(client, path="/persistence", lang=EN) -> str:
    return client.get(path, headers=lang).get_data(as_text=True)


def test_no_offer_without_a_state_from_the_root_unit(client, paths):
    home = page(client, "/")
    assert 'id="ram-warning"' in home and 'id="persistence-offer"' not in home
    assert 'id="persist-none"' in page(client) and 'id="persistence-state"' not in page(client, "/status")
    token = csrf(client)
    client.post("/persistence", data={"csrf_token": token})
    assert not paths[1].exists()


@pytest.mark.parametrize(
    ("state", "code", "params"),
    [
        ("read_only", "persist_read_only", {"disk": "/dev/sdb"}),
        ("too_small", "persist_too_small", {"free": 100, "minimum": 256}),
        ("unavailable", "persist_no_space", {"disk": "/dev/sdb"}),
    ],
)
def test_a_refusal_is_said_and_nothing_is_offered(client, paths, state, code, params):
    persistence.write_state(paths[0], persistence.State(persistence.Status(state, Text(code, **params)).to_dict()))
    assert 'id="persistence-offer"' not in page(client, "/")
    html = page(client)
    assert 'id="persist-refused"' in html and 'id="persist-confirm"' not in html
    assert str(Text(code, **params)).replace("'", "&#39;") in html
    zh = page(client, lang=ZH)
    assert "无法在此创建持久存储" in zh and say(Text(code, **params), "zh") in zh
    client.post("/persistence", data={"csrf_token": csrf(client)})
    assert not paths[1].exists()


@needs_loop
def test_offer_confirm_and_the_root_side_makes_it(client, paths, stick):
    s = stick()
    state_file, request = paths
    persistence.update(state_file, request, **s.where)  # at boot
    home = page(client, "/")
    assert 'id="persistence-offer"' in home and "Keep results on this stick…" in home
    assert "在此 U 盘上保留结果…" in page(client, "/", ZH)
    status = page(client, "/status")
    assert 'id="persistence-state"' in status and "Keep results on this stick…" in status
    html = page(client)
    assert 'id="persist-confirm"' in html and "Create persistent storage" in html
    assert f"Make a new partition of 1016.0 MiB in the unused space of {s.disk} (1.0 GiB)." in html
    assert "It does not change or erase the appliance" in html and "It is not encrypted" in html
    zh = page(client, lang=ZH)
    assert "不会更改或删除本设备自身的分区" in zh and "创建持久存储" in zh

    client.post("/persistence", data={"csrf_token": csrf(client)})
    assert request.exists()  # what appliance-persistence.path waits for
    html = page(client)
    assert 'id="persist-working"' in html and "data-persistence-url" in html
    assert client.get("/persistence/state").get_json()["working"] is True

    persistence.update(state_file, request, **s.where)  # the unit, as root
    assert not request.exists()
    html = page(client)
    assert 'id="persist-done"' in html and "Restart the appliance" in html
    assert client.get("/persistence/state").get_json()["working"] is False
    home = page(client, "/")
    assert 'id="persistence-offer"' not in home and 'id="persistence-ready"' in home
    assert "此 U 盘上的持久存储已就绪" in page(client, lang=ZH)


def test_a_request_nobody_takes_is_said(client, paths):
    import os
    import time

    text = Text("persist_possible", size=1016, disk="/dev/sdb")
    persistence.write_state(
        paths[0], persistence.State(persistence.Status("possible", text, disk="/dev/sdb").to_dict())
    )
    persistence.request(paths[1])
    assert 'id="persist-working"' in page(client)
    old = time.time() - 120
    os.utime(paths[1], (old, old))
    html = page(client)
    assert 'id="persist-stuck"' in html and 'id="persist-confirm"' in html


def test_nothing_is_offered_when_the_data_is_already_on_a_disk(app, client, paths, tmp_path):
    status = persistence.Status("possible", Text("persist_possible", size=1016, disk="/dev/sdb"), disk="/dev/sdb")
    persistence.write_state(paths[0], persistence.State(status.to_dict()))
    (tmp_path / "mounts").write_text(
        f"/dev/sdb1 /run/live/medium iso9660 ro 0 0\n/dev/sdc1 {app.config['DATA_DIR']} ext4 rw 0 0\n"
    )
    html = page(client)
    assert 'id="persist-not-needed"' in html and 'id="persist-confirm"' not in html
    assert 'id="ram-warning"' not in page(client, "/") and "Keep results on this stick…" not in page(
        client, "/status"
    )
    client.post("/persistence", data={"csrf_token": csrf(client)})
    assert not paths[1].exists()
