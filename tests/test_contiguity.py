"""The residual stream is contiguous (issue 23): in a training step with LayerSync no block of a core
backbone takes, returns or hands back a transposed tensor, and a plugin backbone that does is warned about."""

import logging

import pytest
import torch

from layersync import FlowObjective, LayerSync
from layersync import config as configuration
from layersync.check import Batch, Report, check_backbone, exit_code, table
from layersync.interfaces import layout_problem
from layersync.nn import SiT1D, build_sit1d, build_sit3d
from layersync.train.step import TrainStep
from layersync_image.sit import build_sit

CLASSES = 10
# name: (factory, input shape without batch); "T/2": 6 blocks
BACKBONES = {
    "sit": (lambda shape: build_sit(shape, CLASSES, "T/2"), (4, 8, 8)),
    "sit1d": (lambda shape: build_sit1d(shape, CLASSES, "T/2"), (4, 16)),
    "sit3d": (lambda shape: build_sit3d(shape, CLASSES, "T/2"), (4, 2, 8, 8)),
    "sit3d-factorised": (lambda shape: build_sit3d(shape, CLASSES, "T/2", attention="factorised"), (4, 2, 8, 8)),
}


class TransposedSiT1D(SiT1D):
    """SiT-1D as it was before issue 23: the token stream left transposed after patchify."""

    def forward(self, x, t, cond=None, capture=()):
        tokens = self.x_embedder(x).transpose(1, 2) + self.pos_embed
        out, hidden = self.run_blocks(tokens, self.t_embedder(t) + self.y_embedder(cond), capture)
        return self.unpatchify(out), hidden


def transposed():
    torch.manual_seed(0)
    return TransposedSiT1D(4, 16, 2, 32, 4, 2, num_classes=CLASSES)


class LayoutTrace:
    """Every block input and output, every captured hidden state and the gradients of all of them that
    a forward and backward pass meet; ``bad`` names the non-contiguous ones."""

    def __init__(self, model):
        self.bad, self.seen = [], 0
        self.handles = [block.register_forward_hook(self.block_hook(k)) for k, block in enumerate(model.blocks, 1)]
        self.handles.append(model.register_forward_hook(self.model_hook))

    def look(self, where: str, tensor: torch.Tensor) -> None:
        self.seen += 1
        if not tensor.is_contiguous():
            self.bad.append(f"{where} {tuple(tensor.shape)} strides {tensor.stride()}")
        if tensor.requires_grad:
            tensor.register_hook(lambda grad: self.look(f"gradient of {where}", grad))

    def block_hook(self, k):
        def hook(module, args, output):
            self.look(f"block {k} input", args[0])
            self.look(f"block {k} output", output)

        return hook

    def model_hook(self, module, args, output):
        for k, h in output[1].items():
            self.look(f"captured h_{k}", h)

    def remove(self):
        for handle in self.handles:
            handle.remove()


def traced_step(model, shape) -> LayoutTrace:
    """One training step with LayerSync on blocks (2, 4) and label dropout, traced."""
    step = TrainStep(model, FlowObjective(), LayerSync([(2, 4)], 0.2), torch.optim.AdamW(model.parameters()),
                     cfg_dropout=0.5, generator=torch.Generator().manual_seed(0))
    trace = LayoutTrace(model)
    step(torch.randn(2, *shape), torch.tensor([1, 2]))
    trace.remove()
    return trace


@pytest.mark.parametrize("checkpointed", [0, 6], ids=["stored", "checkpointed"])
@pytest.mark.parametrize("name", BACKBONES)
def test_a_training_step_meets_no_transposed_tensor(name, checkpointed):
    factory, shape = BACKBONES[name]
    torch.manual_seed(0)
    model = factory(shape)
    model.checkpoint_blocks = checkpointed
    trace = traced_step(model, shape)
    assert trace.bad == []
    # each block's input and output and their gradients, the two captured states and theirs
    assert trace.seen >= 4 * model.depth + 4


def test_the_trace_finds_a_transposed_stream():
    """What the test above guards against: a transposed stream reaches every block, the gradients too."""
    trace = traced_step(transposed(), (4, 16))
    for where in ("block 1 input", "block 4 output", "captured h_2", "gradient of block 1 output",
                  "gradient of captured h_2"):
        assert any(bad.startswith(where + " ") for bad in trace.bad), (where, trace.bad)


def test_the_layout_rule_is_about_each_sample_s_tokens():
    """Transposed tokens or interleaved samples cost every block a copy; a slice of a longer sequence (Flux's
    single-stream blocks return their image tokens so) does not: the next block concatenates anyway."""
    assert layout_problem({3: torch.randn(2, 32, 8).transpose(1, 2)}, (3,)).startswith(
        "block 3's hidden state is not contiguous (shape (2, 8, 32), strides (256, 1, 8))")
    assert "strides (32, 64, 1)" in layout_problem({1: torch.randn(8, 2, 32).transpose(0, 1)}, (1,))
    assert layout_problem({1: torch.randn(2, 11, 32)[:, 3:]}, (1,)) is None
    assert layout_problem({1: torch.randn(2, 1, 8).transpose(1, 2)}, (1,)) is None  # one channel: any stride


def test_check_forward_warns_once_naming_the_block(caplog):
    model = transposed()
    model.layersync_origin = "plugin 'third', backbone 'transposed'"
    step = TrainStep(model, FlowObjective(), LayerSync([(2, 4)], 0.2), torch.optim.AdamW(model.parameters()),
                     generator=torch.Generator().manual_seed(0))
    with caplog.at_level(logging.WARNING, logger="layersync"):
        for _ in range(3):
            step(torch.randn(2, 4, 16), torch.tensor([1, 2]))
    [record] = [r for r in caplog.records if "contiguous" in r.getMessage()]
    assert record.levelno == logging.WARNING
    assert record.getMessage().startswith("plugin 'third', backbone 'transposed': block 2's hidden state is not "
                                          "contiguous (shape (2, 8, 32), strides (256, 1, 8)): every block pays a copy")


def test_a_contiguous_backbone_is_not_warned_about(caplog):
    factory, shape = BACKBONES["sit1d"]
    model = factory(shape)
    step = TrainStep(model, FlowObjective(), LayerSync([(2, 4)], 0.2), torch.optim.AdamW(model.parameters()))
    with caplog.at_level(logging.WARNING, logger="layersync"):
        step(torch.randn(2, *shape), torch.tensor([1, 2]))
    assert "contiguous" not in caplog.text


def test_check_plugin_reports_the_layout_as_a_warning():
    report = Report()
    config = configuration.load(None, None, ["layersync.pairs=[]"])  # LayerSync on blocks (1, depth)
    batch = Batch(torch.randn(2, 4, 16), torch.tensor([1, 2]))
    check_backbone(report, "backbone/transposed", transposed(), batch, config)
    found = {r.check: (r.status, r.detail) for r in report.results}
    assert found["layout"][0] == "WARN"
    assert found["layout"][1].startswith("block 1's hidden state is not contiguous (shape (2, 8, 32)")
    assert found["forward"][0] == found["train-step"][0] == "PASS"
    assert [line.split()[:3] for line in table(report.results).splitlines() if line.startswith("WARN")] == [
        ["WARN", "backbone/transposed", "layout"]]
    assert exit_code(report.results) == 0

    report = Report()
    check_backbone(report, "backbone/sit1d", BACKBONES["sit1d"][0]((4, 16)), batch, config)
    assert {r.check: r.status for r in report.results}["layout"] == "PASS"
