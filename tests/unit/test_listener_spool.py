"""The spool writes atomically: a complete file under its final name, or nothing."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from listeners import spool as spool_module
from listeners.spool import Spool, is_valid_uid

STUDY, SERIES, SOP = "1.2.3", "1.2.3.4", "1.2.3.4.5"


def test_write_puts_the_bytes_under_the_uid_path_and_reports_their_digest(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    path = spool.path_for(STUDY, SERIES, SOP)
    stored = spool.write(path, b"head", b"body")
    assert path == tmp_path / "spool" / STUDY / SERIES / f"{SOP}.dcm"
    assert path.read_bytes() == b"headbody"
    assert stored.size_bytes == 8
    assert stored.content_digest == hashlib.sha256(b"headbody").hexdigest()
    assert list(spool.files()) == [path]


def test_a_failed_write_leaves_no_file_at_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = Spool(tmp_path / "spool")
    path = spool.path_for(STUDY, SERIES, SOP)

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space"):
        spool.write(path, b"x" * 1000)
    assert [p for p in (tmp_path / "spool").rglob("*") if p.is_file()] == []


@pytest.mark.parametrize("overlap", [True, False], ids=["folders-beside", "folders-after"])
def test_new_folders_are_fsynced_and_the_file_is_whole_either_way(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, overlap: bool
) -> None:
    """Alone in its process a data set fsyncs its new folders on other threads, beside the
    file's fsync; among others, after the folder's fsync on its own thread. Both make every
    new folder's entry durable and leave the same file."""
    synced: list[Path] = []
    real = spool_module._fsync_dir

    def recording(path: Path) -> None:
        synced.append(path)
        real(path)

    monkeypatch.setattr(spool_module, "_fsync_dir", recording)
    root = tmp_path / "spool"
    spool = Spool(root)
    path = spool.path_for(STUDY, SERIES, SOP)
    writer = spool.writer(SOP)
    writer.write(b"head")
    writer.write(b"body")
    stored = writer.commit(path, overlap=overlap)
    assert path.read_bytes() == b"headbody"
    assert stored.content_digest == hashlib.sha256(b"headbody").hexdigest()
    # the new study and series folders' parents, and the series folder for the rename
    assert sorted(synced) == sorted([root, root / STUDY, root / STUDY / SERIES])
    assert list(spool.files()) == [path]
    assert [p.name for p in spool.incoming.iterdir()] == []


@pytest.mark.parametrize("overlap", [True, False], ids=["folders-beside", "folders-after"])
def test_a_folder_that_cannot_be_made_durable_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, overlap: bool
) -> None:
    root = tmp_path / "spool"
    real = spool_module._fsync_dir

    def failing(path: Path) -> None:
        if path == root:  # the new study folder's entry
            raise OSError(5, "Input/output error")
        real(path)

    monkeypatch.setattr(spool_module, "_fsync_dir", failing)
    spool = Spool(root)
    path = spool.path_for(STUDY, SERIES, SOP)
    writer = spool.writer(SOP)
    writer.write(b"x" * 1000)
    with pytest.raises(OSError, match="Input/output"):
        writer.commit(path, overlap=overlap)
    assert [p for p in root.rglob("*") if p.is_file()] == []


def test_rewrite_replaces_the_file_whole(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    path = spool.path_for(STUDY, SERIES, SOP)
    spool.write(path, b"first")
    spool.write(path, b"second")
    assert path.read_bytes() == b"second"


def test_partials_from_a_crash_are_removed(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    folder = tmp_path / "spool" / STUDY / SERIES
    folder.mkdir(parents=True)
    (folder / f".{SOP}.dcm.123.456.part").write_bytes(b"half")
    assert spool.remove_partials() == 1
    assert list(folder.iterdir()) == []


@pytest.mark.parametrize("uid", ["../../etc", "1.2.x", "", "1." * 40 + "1", "01.2", "1..2"])
def test_non_uids_never_become_paths(tmp_path: Path, uid: str) -> None:
    assert not is_valid_uid(uid)
    with pytest.raises(ValueError, match="not a valid UID"):
        Spool(tmp_path).path_for(uid, SERIES, SOP)
