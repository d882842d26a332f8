"""The spool writes atomically: a complete file under its final name, or nothing."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from listeners import spool as spool_module
from listeners.spool import Spool, is_valid_uid

STUDY, SERIES, SOP = "1.2.3", "1.2.3.4", "1.2.3.4.5"  # earlier versions filed by study, series
NOON_1_MARCH_2026 = 1772366400.0  # UTC
# how a commit makes new folders durable: beside the file's fsync on other threads (alone),
# after it on its own thread (among others), or made beforehand by SpoolWriter.prepare()
FOLDER_MODES = pytest.mark.parametrize(
    ("overlap", "prepare"),
    [(True, False), (False, False), (True, True)],
    ids=["folders-beside", "folders-after", "folders-prepared"],
)


def test_write_puts_the_bytes_under_the_day_and_uid_and_reports_their_digest(
    tmp_path: Path,
) -> None:
    spool = Spool(tmp_path / "spool")
    path = spool.path_for(SOP, NOON_1_MARCH_2026)
    stored = spool.write(path, b"head", b"body")
    assert path == tmp_path / "spool" / "2026-03-01" / f"{SOP}.dcm"
    assert path.read_bytes() == b"headbody"
    assert stored.size_bytes == 8
    assert stored.content_digest == hashlib.sha256(b"headbody").hexdigest()
    assert list(spool.files()) == [path]


def test_a_failed_write_leaves_no_file_at_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = Spool(tmp_path / "spool")
    path = spool.path_for(SOP)

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space"):
        spool.write(path, b"x" * 1000)
    assert [p for p in (tmp_path / "spool").rglob("*") if p.is_file()] == []


@FOLDER_MODES
def test_new_folders_are_fsynced_and_the_file_is_whole_either_way(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, overlap: bool, prepare: bool
) -> None:
    """Alone in its process a data set fsyncs its new folders on other threads, beside the
    file's fsync (or they were made beforehand by prepare()); among others, after the folder's
    fsync on its own thread. All make every new folder's entry durable and leave the same
    file."""
    synced: list[Path] = []
    real = spool_module._fsync_dir

    def recording(path: Path) -> None:
        synced.append(path)
        real(path)

    monkeypatch.setattr(spool_module, "_fsync_dir", recording)
    root = tmp_path / "spool"
    spool = Spool(root)
    path = spool.path_for(SOP)
    writer = spool.writer(SOP)
    if prepare:
        writer.prepare(path.parent)
    writer.write(b"head")
    writer.write(b"body")
    stored = writer.commit(path, overlap=overlap)
    assert path.read_bytes() == b"headbody"
    assert stored.content_digest == hashlib.sha256(b"headbody").hexdigest()
    # the new day folder's parent, and the day folder for the rename
    assert sorted(synced) == sorted([root, path.parent])
    assert list(spool.files()) == [path]
    assert [p.name for p in spool.incoming.iterdir()] == []


@FOLDER_MODES
def test_a_folder_that_cannot_be_made_durable_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, overlap: bool, prepare: bool
) -> None:
    root = tmp_path / "spool"
    real = spool_module._fsync_dir

    def failing(path: Path) -> None:
        if path == root:  # the new day folder's entry
            raise OSError(5, "Input/output error")
        real(path)

    monkeypatch.setattr(spool_module, "_fsync_dir", failing)
    spool = Spool(root)
    path = spool.path_for(SOP)
    writer = spool.writer(SOP)
    if prepare:
        writer.prepare(path.parent)
    writer.write(b"x" * 1000)
    with pytest.raises(OSError, match="Input/output"):
        writer.commit(path, overlap=overlap)
    assert [p for p in root.rglob("*") if p.is_file()] == []


def test_rewrite_replaces_the_file_whole(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    path = spool.path_for(SOP)
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
        Spool(tmp_path).path_for(uid)


def test_a_failed_background_flush_fails_the_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first bytes are flushed while the rest arrives; an fsync's error is reported once,
    so one that fails there fails the commit even when the final fsync succeeds."""
    flushed: list[int] = []

    def failing(fd: int) -> None:
        flushed.append(fd)
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", failing)
    spool = Spool(tmp_path / "spool")
    writer = spool.writer(SOP, flush_early=True)
    for _ in range(4):
        writer.write(b"x" * spool_module.WRITEBACK_STEP)
    with pytest.raises(OSError, match="Input/output"):
        writer.commit(spool.path_for(SOP))
    assert flushed
    assert [p for p in (tmp_path / "spool").rglob("*") if p.is_file()] == []


def _reserved(spool: Spool, timeout: float = 10.0) -> list[Path]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = sorted(spool.incoming.glob(f"*{spool_module.RESERVE_SUFFIX}"))
        if found:
            return found
        time.sleep(0.01)
    return []


def test_a_file_made_ahead_is_the_next_writers_and_removed_at_close(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", reserve=1)
    spool.write(spool.path_for(SOP), b"first")
    [reserve] = _reserved(spool)
    assert reserve.stat().st_size == 0
    inode = reserve.stat().st_ino
    writer = spool.writer("1.2.3.4.6")
    assert writer.partial.stat().st_ino == inode  # the file made ahead, renamed
    writer.write(b"second")
    path = spool.path_for("1.2.3.4.6")
    writer.commit(path)
    assert path.read_bytes() == b"second"
    assert not list(spool.incoming.glob(f"*{spool_module.RESERVE_SUFFIX}"))
    spool.make_ahead()  # the listener's handler, at a data set's last fragment
    assert _reserved(spool)  # made again for the next one
    spool.close()
    assert list(spool.incoming.iterdir()) == []


def test_files_made_ahead_by_a_dead_process_are_removed(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.incoming.mkdir(parents=True)
    for pid in (123, 124):
        (spool.incoming / f".reserve.{pid}.456{spool_module.RESERVE_SUFFIX}").write_bytes(b"")
    assert spool.remove_partials(pid=123) == 0  # empty, made ahead: nothing was lost
    assert [p.name for p in spool.incoming.iterdir()] == [".reserve.124.456.reserve"]


def test_a_commit_elsewhere_than_the_prepared_folder_makes_its_own(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    path = spool.path_for(SOP)
    writer = spool.writer(SOP)
    writer.prepare(spool.path_for(SOP, NOON_1_MARCH_2026).parent)  # another day's
    writer.write(b"data")
    writer.commit(path)
    assert list(spool.files()) == [path]


def test_files_of_earlier_versions_in_study_and_series_folders_are_found(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    today = spool.path_for(SOP)
    spool.write(today, b"now")
    earlier = tmp_path / "spool" / STUDY / SERIES / "1.2.3.4.6.dcm"
    spool.write(earlier, b"before")
    assert sorted(spool.files()) == sorted([today, earlier])


def test_a_folder_used_before_is_not_made_again_unless_it_went(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """prepare() does nothing for the day's folder once a commit used it; if the folder was
    removed meanwhile, the commit makes it again, its entry durable."""
    synced: list[Path] = []
    real = spool_module._fsync_dir

    def recording(path: Path) -> None:
        synced.append(path)
        real(path)

    monkeypatch.setattr(spool_module, "_fsync_dir", recording)
    root = tmp_path / "spool"
    spool = Spool(root)
    first = spool.path_for(SOP, NOON_1_MARCH_2026)
    spool.write(first, b"first")
    for sop, removed in (("1.2.3.4.6", False), ("1.2.3.4.7", True)):
        if removed:
            for path in spool.files():
                path.unlink()
            first.parent.rmdir()
        synced.clear()
        writer = spool.writer(sop)
        writer.prepare(first.parent)
        assert writer._folder is None  # no task to make it
        writer.write(b"next")
        path = spool.path_for(sop, NOON_1_MARCH_2026)
        writer.commit(path)
        assert path.read_bytes() == b"next"
        # the folder's fsync for the rename, and its parent's when it was made again
        assert sorted(synced) == sorted([path.parent, root] if removed else [path.parent])
