"""One writer per folder: a run folder, a sample set and a latent cache are held while a command writes
there (a second writer is refused naming the holder; a killed holder frees the folder), temporary names
are unique per writer, and SIGTERM to layersync-cache says what the cache keeps and ends its workers.

The refusals through each CLI (exit 2, one line) are rows of ``test_bad_input_matrix.py``."""

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from helpers import png_tree, tiny_args, tiny_vae
from layersync import cache, files, sample_set
from layersync.cli import cache as cache_cli
from layersync.cli import sample as sample_cli
from layersync.cli import train as train_cli
from layersync.errors import ConfigError
from layersync import checkpoint

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def refusal(folder) -> str:
    """What a second writer of ``folder`` is told now."""
    with pytest.raises(ConfigError) as info:
        with files.folder_lock(folder, "run folder"):
            pass
    return str(info.value)


def assert_free(folder) -> None:
    """Nobody holds ``folder``, and a writer leaves no lock file there."""
    with files.folder_lock(folder, "run folder"):
        pass
    assert not (Path(folder) / files.LOCK).exists()


@pytest.fixture(scope="module")
def vae(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vae")
    tiny_vae(8).save_pretrained(folder)
    return folder


def cache_args(data, out, vae, workers=0):
    return ["--plugin", "image", "--data", str(data), "--out", str(out), "--set", f"tokenizer.path={vae}",
            "--set", "data.image_size=8", "--batch", "2", "--shard-size", "2", "--device", "cpu",
            "--workers", str(workers)]


def test_two_writes_of_one_path_use_their_own_temporary_files(tmp_path):
    path, both_written = tmp_path / "x.txt", threading.Barrier(2)
    names, errors = [], []

    def write(text):
        try:
            with files.atomic(path) as tmp:
                tmp.write_text(text)
                names.append(tmp.name)
                both_written.wait(timeout=10)  # neither renames before both have written
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(c * 1000,)) for c in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(set(names)) == 2, (errors, names)
    assert path.read_text() in ("a" * 1000, "b" * 1000)
    assert [p.name for p in tmp_path.iterdir()] == ["x.txt"]


@pytest.mark.slow
def test_training_holds_its_run_folder(tmp_path, monkeypatch):
    out, told = tmp_path / "run", []
    save = checkpoint.save
    monkeypatch.setattr(checkpoint, "save", lambda *a, **k: told.append(refusal(out)) or save(*a, **k))
    assert train_cli.main(tiny_args(out, 2)) == 0
    assert len(told) == 1 and f"{out} is in use: pid {os.getpid()} on " in told[0], told
    assert not (out / files.LOCK).exists()
    assert_free(out)


def test_a_sample_set_is_held_while_sampling(tiny_run, tmp_path, monkeypatch):
    run, out, told = tiny_run, tmp_path / "set", []
    write_part = sample_set.write_part
    monkeypatch.setattr(sample_set, "write_part", lambda *a: told.append(refusal(out)) or write_part(*a))
    assert sample_cli.main(["--ckpt", str(run), "--out", f"{out}/", "-n", "4", "--steps", "2", "--device", "cpu"]) == 0
    assert len(told) == 1 and f"{out} is in use: pid {os.getpid()} on " in told[0], told
    assert (out / "samples.npz").is_file()
    assert not (out / files.LOCK).exists()
    assert_free(out)


def test_a_cache_is_held_while_encoding(tmp_path, vae, monkeypatch):
    out, told = tmp_path / "cache", []
    save_file = cache.save_file
    monkeypatch.setattr(cache, "save_file", lambda *a: told.append(refusal(out)) or save_file(*a))
    assert cache_cli.main(cache_args(png_tree(tmp_path / "data"), out, vae)) == 0
    assert len(told) == 2 and f"{out} is in use: pid {os.getpid()} on " in told[0], told
    assert not (out / files.LOCK).exists()
    assert_free(out)


def test_a_killed_holder_frees_the_folder(tmp_path):
    folder = tmp_path / "run"
    hold = f"from layersync.files import folder_lock\nwith folder_lock({str(folder)!r}, 'run folder'):\n" \
           "    print('held', flush=True)\n    input()"
    holder = subprocess.Popen([sys.executable, "-c", hold], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        assert f"pid {holder.pid} on {socket.gethostname()} (-c)" in refusal(folder)
    finally:
        holder.kill()
        holder.wait()
    assert (folder / files.LOCK).exists()  # what a crash leaves: the file, not the lock
    assert_free(folder)


def launch_rank(out, rank, port):
    env = {**ENV, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    return subprocess.Popen([sys.executable, "-m", "layersync.cli.train", *tiny_args(out, 2)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


@pytest.mark.distributed
def test_every_ddp_rank_stops_when_the_run_folder_is_held(tmp_path):
    out = tmp_path / "run"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with files.folder_lock(out, "run folder"):
        ranks = [launch_rank(out, rank, port) for rank in range(2)]
        try:
            results = [(p.wait(timeout=240), p.communicate()[1]) for p in ranks]
        finally:
            for p in ranks:
                p.kill()
    for code, err in results:
        assert code == 2, err[-2000:]
        assert f"layersync-train: error: run folder {out} is in use: pid {os.getpid()}" in err.splitlines()[-1], err
    assert sorted(p.name for p in out.iterdir()) == []


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def running(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
def test_sigterm_to_layersync_cache_says_what_it_keeps_and_ends_its_workers(tmp_path, vae):
    data, out = png_tree(tmp_path / "data"), tmp_path / "cache"
    os.mkfifo(data / "b" / "z.png")  # the last item: its DataLoader worker waits in open() for ever
    proc = subprocess.Popen([sys.executable, "-m", "layersync.cli.cache", *cache_args(data, out, vae, workers=2)],
                            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    workers = []
    try:
        while len(list(out.glob("shard_*.safetensors"))) < 2:  # the shards before the one that waits
            assert proc.poll() is None, proc.stderr.read()[-2000:]
            time.sleep(0.05)
        workers = children(proc.pid)
        assert len(workers) == 2, workers
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    finally:
        proc.kill()
        gone = {pid: not running(pid) for pid in workers}
        for pid in workers:  # left waiting, they would hold the stderr pipe open
            if running(pid):
                os.kill(pid, signal.SIGKILL)
    err = proc.communicate()[1]
    assert code == 143, err[-2000:]
    assert err.strip().splitlines()[-1] == (f"interrupted: stopped by SIGTERM: latent cache {out} keeps the shards "
                                            "written so far (2); run layersync-cache again with the same arguments "
                                            "to resume")
    assert all(gone.values()), gone
