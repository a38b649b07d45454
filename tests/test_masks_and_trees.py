"""Variable-length data and non-label conditions in core: masked losses, padding-blind attention,
dict conditions through dropout, CFG and the captured step."""

import pytest
import torch

from layersync import FlowObjective, LayerSync, trees
from layersync.nn import build_sit1d
from layersync.sampling import Sampler, SamplerConfig
from layersync.train.modes import CapturedStep
from layersync.train.optim import build_optimizer
from layersync.train.step import TrainStep

B, C, T, TEXT = 4, 6, 12, 5
LENGTHS = torch.tensor([12, 7, 3, 9])


def masks(lengths=LENGTHS, frames=T):
    return torch.arange(frames)[None] < lengths[:, None]


def scramble_padding(x, mask, seed):
    """x with its padded frames (mask false, last axis) replaced by other values."""
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed)) * 10
    return torch.where(mask.unsqueeze(1).expand_as(x), x, noise)


def text_model(device="cpu"):
    torch.manual_seed(0)
    model = build_sit1d((C, T), 0, "T/1", cond_dims={"text": TEXT}).to(device)
    for p in model.parameters():  # adaLN-Zero starts as the identity: make every block matter
        torch.nn.init.normal_(p, std=0.05)
    return model


def test_masked_flow_loss_ignores_padding_and_is_the_mean_over_valid_frames():
    obj, mask = FlowObjective(), masks()
    g = torch.Generator().manual_seed(0)
    pred, x1, x0 = (torch.randn(B, C, T, generator=g) for _ in range(3))
    t = torch.rand(B, generator=g)
    loss = obj.loss(pred, x1, x0, t, mask)
    other = obj.loss(*(scramble_padding(v, mask, i) for i, v in enumerate((pred, x1, x0))), t, mask)
    assert torch.equal(loss, other)
    _, target = obj.path.interpolate(x1, x0, t)
    for b in range(B):
        n = int(LENGTHS[b])
        assert loss[b] == pytest.approx(((pred[b, :, :n] - target[b, :, :n]) ** 2).mean().item(), rel=1e-6)
    assert not torch.equal(obj.loss(pred, x1, x0, t), loss)  # without the mask the padding counts


def test_masked_layersync_averages_valid_tokens_only():
    mask = masks()
    g = torch.Generator().manual_seed(1)
    h2, h4 = torch.randn(B, T, 8, generator=g), torch.randn(B, T, 8, generator=g)
    term = LayerSync([(2, 4)], weight=1.0)
    value = term({2: h2, 4: h4}, mask)
    cos = torch.nn.functional.cosine_similarity(h2, h4, dim=-1)
    assert value.item() == pytest.approx(-cos[mask].mean().item(), rel=1e-6)
    padded = {k: torch.where(mask[..., None], h, torch.randn(h.shape, generator=g)) for k, h in ((2, h2), (4, h4))}
    assert term(padded, mask).item() == pytest.approx(value.item(), rel=1e-6)
    assert term({2: h2, 4: h4}).item() != pytest.approx(value.item())


def test_attention_keeps_valid_frames_blind_to_padding():
    model, mask = text_model().eval(), masks()
    x, t = torch.randn(B, C, T), torch.rand(B)
    cond = {"text": torch.randn(B, TEXT)}
    out, hidden = model(x, t, cond, capture=(3,), mask=mask)
    out2, hidden2 = model(scramble_padding(x, mask, 5), t, cond, capture=(3,), mask=mask)
    torch.testing.assert_close(out.transpose(1, 2)[mask], out2.transpose(1, 2)[mask])
    torch.testing.assert_close(hidden[3][mask], hidden2[3][mask])
    unmasked = model(scramble_padding(x, mask, 5), t, cond)[0]
    assert not torch.allclose(out.transpose(1, 2)[mask], unmasked.transpose(1, 2)[mask], atol=1e-4)


def test_train_step_with_mask_and_dict_condition_ignores_padding():
    """Two runs whose batches differ only in padded frames give the same losses and weights."""
    mask, cond = masks(), {"text": torch.randn(B, TEXT)}
    x = torch.randn(B, C, T)
    results = []
    for seed in (None, 3):
        model = text_model()
        opt = build_optimizer(model.parameters(), {"lr": 1e-3, "weight_decay": 0.0, "betas": [0.9, 0.999],
                                                   "eps": 1e-8, "grad_clip": 0.0}, torch.device("cpu"), capturable=False)
        step = TrainStep(model, FlowObjective(), LayerSync([(1, 3)], 0.2), opt, cfg_dropout=0.5,
                         generator=torch.Generator().manual_seed(0))
        batch = x if seed is None else scramble_padding(x, mask, seed)
        losses = [{k: v.item() for k, v in step(batch, cond, mask).items()} for _ in range(3)]
        results.append((losses, {k: v.clone() for k, v in model.state_dict().items()}))
    assert results[0][0] == results[1][0]
    for name, value in results[0][1].items():
        torch.testing.assert_close(value, results[1][1][name], msg=name)


def test_dict_conditions_drop_to_zeros_and_guide_like_labels():
    model = text_model().eval()
    cond = {"text": torch.randn(B, TEXT) + 1}
    dropped = model.drop_cond(cond, torch.tensor([True, False, True, False]))
    assert dropped["text"][0].abs().sum() == 0 and torch.equal(dropped["text"][1], cond["text"][1])
    sampler = Sampler(FlowObjective(), SamplerConfig(method="ode", solver="euler", steps=1, cfg_scale=3.0))
    x, t, mask = torch.randn(B, C, T), torch.full((B,), 0.5), masks()
    guided = sampler.predict(model, x, t, cond, mask)
    c = model(x, t, cond, mask=mask)[0]
    u = model(x, t, {"text": torch.zeros(B, TEXT)}, mask=mask)[0]
    torch.testing.assert_close(guided, u + 3.0 * (c - u))


def test_tree_helpers():
    tree = {"text": torch.arange(6.0).reshape(3, 2), "extra": {"ids": torch.arange(3)}}
    both = trees.cat([tree, trees.rows(tree, slice(0, 1))])
    assert both["text"].shape == (4, 2) and both["extra"]["ids"].tolist() == [0, 1, 2, 0]
    assert trees.batch_size(tree) == 3 and len(trees.leaves(tree)) == 2
    buffers = trees.clone(tree)
    trees.copy_(buffers, trees.tree_map(lambda v: v + 1, tree))
    assert buffers["extra"]["ids"].tolist() == [1, 2, 3]
    with pytest.raises(ValueError, match="does not fit the buffer"):
        trees.copy_(buffers, {"text": torch.zeros(2, 2), "extra": {"ids": torch.zeros(3)}})


@pytest.mark.gpu
def test_graph_with_dict_condition_and_mask_matches_eager_on_cuda():
    """The captured step copies a tree of conditions and the mask into its static buffers."""
    mask = masks().cuda()
    data = [(torch.randn(B, C, T, device="cuda"), {"text": torch.randn(B, TEXT, device="cuda")}) for _ in range(6)]
    runs = []
    for captured in (False, True):
        model = text_model("cuda")
        opt = build_optimizer(model.parameters(), {"lr": 1e-3, "weight_decay": 0.0, "betas": [0.9, 0.999],
                                                   "eps": 1e-8, "grad_clip": 0.0}, torch.device("cuda"),
                              capturable=captured)
        step = TrainStep(model, FlowObjective(), LayerSync([(1, 3)], 0.2), opt, cfg_dropout=0.5,
                         generator=torch.Generator("cuda").manual_seed(0))
        run = CapturedStep(step, warmup=2) if captured else step
        runs.append([run(x, cond, mask)["loss"].item() for x, cond in data])
    assert runs[1] == pytest.approx(runs[0], rel=1e-4)
