"""Durable writes (appliance/files.py): what each write leaves flushed."""

from __future__ import annotations

from appliance import files


def test_atomic_writes_flush_the_file_again_under_its_final_name(tmp_path, monkeypatch):
    """FAT sticks: a rename writes a new directory entry that gets the file's size only when the file itself is
    flushed again; fsync of the temporary file and of the folder left empty files on a pulled stick."""
    flushed = []
    monkeypatch.setattr(files, "fsync_file", lambda path: flushed.append(path))
    files.write_atomic(tmp_path / "a.txt", b"text")
    files.copy_atomic(tmp_path / "a.txt", tmp_path / "b.txt")
    assert flushed == [tmp_path / "a.txt", tmp_path / "b.txt"]
    assert (tmp_path / "b.txt").read_bytes() == b"text" and not list(tmp_path.glob(".*.tmp"))


def test_fsync_file_works_on_a_read_only_file(tmp_path):
    path = tmp_path / "r.txt"
    path.write_text("x")
    path.chmod(0o444)
    files.fsync_file(path)
