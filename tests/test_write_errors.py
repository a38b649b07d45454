"""Failed writes (a full disk, a read-only folder, a path under a file): one line naming the file, exit 2,
and what was written before stays whole."""

import errno
import os
import shutil
import stat
from pathlib import Path

import pytest
import torch

from helpers import error_line, tiny_args
from layersync import files
from layersync.cli import train
from layersync.errors import WriteError
from layersync import checkpoint

AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def full_disk(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_atomic_reports_the_target_and_removes_the_tmp(tmp_path):
    path = tmp_path / "out.json"
    files.write_json(path, {"old": 1})
    with pytest.raises(WriteError) as info:
        with files.atomic(path) as tmp, open(tmp, "w") as f:
            f.write("partial")
            full_disk()
    assert str(info.value) == f"cannot write {path}: no space left on device"
    assert info.value.errno == errno.ENOSPC
    assert path.read_text() == '{\n "old": 1\n}\n' and not (tmp_path / "out.json.tmp").exists()


def test_atomic_passes_on_errors_about_other_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        with files.atomic(tmp_path / "out.txt") as tmp:
            tmp.write_text("x")
            (tmp_path / "missing").read_text()  # a read inside the block is not this write's error
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_checkpoint_on_a_really_full_device_keeps_the_previous_one(tmp_path, monkeypatch):
    folder = tmp_path / "checkpoints"
    first = checkpoint.save({"w": torch.ones(3)}, folder, 1)
    monkeypatch.setattr(files.secrets, "token_hex", lambda n: "full")  # the temporary name: step_0000002.pt.full.tmp
    (folder / "step_0000002.pt.full.tmp").symlink_to("/dev/full")  # writes there fail with ENOSPC
    with pytest.raises(WriteError, match=r"cannot write .*step_0000002\.pt: no space left on device"):
        checkpoint.save({"w": torch.zeros(1000)}, folder, 2)
    assert sorted(p.name for p in folder.iterdir()) == ["step_0000001.pt"]
    assert torch.equal(checkpoint.load(first)["w"], torch.ones(3))


def test_atomic_fsyncs_the_file_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    calls = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        calls.append("fsync folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync file")
        real_fsync(fd)

    def replace(a, b):
        calls.append("replace")
        real_replace(a, b)

    monkeypatch.setattr(files.os, "fsync", fsync)
    monkeypatch.setattr(files.os, "replace", replace)
    files.write_json(tmp_path / "x.json", [1])
    assert calls == ["fsync file", "replace", "fsync folder"]


@pytest.mark.slow
def test_disk_full_during_training(tiny_run, tmp_path, capsys, monkeypatch):
    out = shutil.copytree(tiny_run, tmp_path / "run")  # 3 steps; resumed to 6 on a full disk
    ckpt = out / "checkpoints" / "step_0000003.pt"
    saved = checkpoint.load(ckpt)
    monkeypatch.setattr(torch, "save", full_disk)
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        train.main(tiny_args(out, 6))
    line = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bar
    assert info.value.code == 2
    assert line == f"layersync-train: error: cannot write {out / 'checkpoints' / 'step_0000006.pt'}: " \
                   "no space left on device"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_0000003.pt"]
    kept = checkpoint.load(ckpt)
    assert kept["step"] == 3 and all(torch.equal(v, saved["model"][k]) for k, v in kept["model"].items())


def test_out_under_a_file(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    line = error_line(train.main, tiny_args(tmp_path / "file" / "run", 1), capsys)
    assert str(tmp_path / "file") in line and "not a directory" in line


@pytest.mark.skipif(AS_ROOT, reason="root writes into read-only folders")
def test_read_only_out_folder(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        line = error_line(train.main, tiny_args(ro / "run", 1), capsys)
    finally:
        ro.chmod(0o755)
    assert str(ro / "run") in line and "permission denied" in line


def test_read_only_file_system(tmp_path, capsys, monkeypatch):
    """Always runs (also as root): the folder's creation fails as on a read-only mount."""
    target = tmp_path / "ro" / "run"
    real_mkdir = Path.mkdir

    def mkdir(self, *args, **kwargs):
        if self == target or target in self.parents:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    line = error_line(train.main, tiny_args(target, 1), capsys)
    assert line == f"layersync-train: error: cannot write {target}: read-only file system"


def test_read_only_checkpoint_folder(tmp_path, monkeypatch):
    """The rename into a read-only folder fails: named by the checkpoint, no tmp left behind."""
    def replace(a, b):
        raise OSError(errno.EACCES, os.strerror(errno.EACCES), str(a), None, str(b))

    monkeypatch.setattr(files.os, "replace", replace)
    with pytest.raises(WriteError, match=r"cannot write .*step_0000001\.pt: permission denied"):
        checkpoint.save({"w": torch.ones(1)}, tmp_path, 1)
    assert list(tmp_path.iterdir()) == []


def test_config_file_that_is_a_folder_or_unreadable(tmp_path, capsys, monkeypatch):
    line = error_line(train.main, tiny_args(tmp_path / "out", 1, "--config", str(tmp_path)), capsys)
    assert f"config file {tmp_path} is a folder" in line
    bad = tmp_path / "c.yaml"
    bad.write_bytes(b"\xff\xfe\x00")
    assert "is not text" in error_line(train.main, tiny_args(tmp_path / "out", 1, "--config", str(bad)), capsys)
    bad.write_text("train: {}\n")
    real_read = Path.read_text

    def read_text(self, *args, **kwargs):
        if self == bad:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return real_read(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", read_text)
    line = error_line(train.main, tiny_args(tmp_path / "out", 1, "--config", str(bad)), capsys)
    assert line == f"layersync-train: error: cannot read config file {bad}: permission denied"


@pytest.mark.skipif(AS_ROOT, reason="root reads unreadable files")
def test_unreadable_config_file(tmp_path, capsys):
    bad = tmp_path / "c.yaml"
    bad.write_text("train: {}\n")
    bad.chmod(0)
    line = error_line(train.main, tiny_args(tmp_path / "out", 1, "--config", str(bad)), capsys)
    assert line.endswith(f"cannot read config file {bad}: permission denied")
