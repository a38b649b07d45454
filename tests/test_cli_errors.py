"""Bad input: exit code 2 and one clear line on stderr."""

from helpers import error_line, tiny_args
from layersync.cli import train


def run_error(argv, capsys):
    return error_line(train.main, argv, capsys)


def test_unknown_plugin_lists_known(tmp_path, capsys):
    line = run_error(["--plugin", "smell", "--out", str(tmp_path)], capsys)
    assert "unknown plugin 'smell'" in line and "image" in line


def test_unknown_config_key(tmp_path, capsys):
    line = run_error(tiny_args(tmp_path, 1, "--set", "train.batchsize=3"), capsys)
    assert "train.batchsize" in line and "batch_size" in line


def test_invalid_pair_names_pair_and_depth(tmp_path, capsys):
    line = run_error(tiny_args(tmp_path, 1, "--layersync", "4:9"), capsys)
    assert "(4, 9)" in line and "6" in line


def test_malformed_pairs(tmp_path, capsys):
    assert "--layersync" in run_error(tiny_args(tmp_path, 1, "--layersync", "4-9"), capsys)


def test_bad_argument_type(tmp_path, capsys):
    assert "--steps" in run_error(["--plugin", "image", "--out", str(tmp_path), "--steps", "many"], capsys)


def test_bad_config_value(tmp_path, capsys):
    assert "precision" in run_error(tiny_args(tmp_path, 1, "--set", "train.precision=fp8"), capsys)


def test_unknown_model_option(tmp_path, capsys):
    assert "backbone 'sit'" in run_error(tiny_args(tmp_path, 1, "--set", "model.width=3"), capsys)


def test_missing_data_folder(tmp_path, capsys):
    line = run_error(tiny_args(tmp_path / "out", 1, "--data", str(tmp_path / "nope")), capsys)
    assert str(tmp_path / "nope") in line


def test_bad_config_file(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2")
    assert "bad.yaml" in run_error(tiny_args(tmp_path / "out", 1, "--config", str(bad)), capsys)


def test_graph_mode_without_cuda(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert "needs a CUDA device" in run_error(tiny_args(tmp_path, 1, "--step-mode", "graph"), capsys)


def test_grad_accum_must_divide_the_batch(tmp_path, capsys):
    line = run_error(tiny_args(tmp_path, 1, "--set", "train.grad_accum=3"), capsys)
    assert "train.grad_accum=3" in line and "16" in line
    assert "train.grad_accum" in run_error(tiny_args(tmp_path / "b", 1, "--set", "train.grad_accum=0"), capsys)


def test_bad_lr_schedule(tmp_path, capsys):
    assert "train.lr_schedule" in run_error(tiny_args(tmp_path, 1, "--set", "train.lr_schedule=linear"), capsys)
    assert "train.warmup_steps" in run_error(tiny_args(tmp_path, 1, "--set", "train.warmup_steps=-3"), capsys)
