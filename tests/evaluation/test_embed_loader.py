"""The one embedding loop (evaluation/embed.py) against the loops it replaced: eval mode for the pass
(the caller's mode restored), no gradients, float32 CPU features, the batch fields concatenated."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from contrastlab.evaluation.embed import embed_loader
from contrastlab.evaluation.pairs import embed_pairs


class Net(nn.Module):
    """Batch norm and dropout: train-mode and eval-mode outputs differ, and train mode moves the stats."""

    def __init__(self, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.lin = nn.Linear(5, 3).to(dtype)
        nn.init.normal_(self.lin.weight, generator=g)
        self.bn = nn.BatchNorm1d(3).to(dtype)
        self.bn.running_mean.fill_(0.5)
        self.drop = nn.Dropout(0.5)

    def embed(self, x: Tensor) -> Tensor:
        return self.drop(self.bn(self.lin(x)))


def batches(dtype: torch.dtype = torch.float32) -> list[dict]:
    g = torch.Generator().manual_seed(1)
    return [
        {"image": torch.randn(4, 5, generator=g, dtype=dtype), "label": [0, 1, 2, 3], "index": torch.arange(4)},
        {"image": torch.randn(3, 5, generator=g, dtype=dtype), "label": torch.tensor([4, 5, 6])},  # no "index"
    ]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_train_mode_model_gives_eval_mode_features_and_stays_in_train_mode(dtype: torch.dtype) -> None:
    net, data = Net(dtype), batches(dtype)
    net.eval()
    with torch.no_grad():  # the loop every caller used to write, on a model already in eval mode
        ref_x = torch.cat([net.embed(b["image"]).float().cpu() for b in data])
        ref_y = torch.cat([torch.as_tensor(b["label"]) for b in data])
    net.train()
    stats = net.bn.running_mean.clone()
    x, y = embed_loader(net.embed, data)
    assert net.training and net.bn.training  # the caller's mode is back
    assert torch.equal(net.bn.running_mean, stats)  # no train-mode batch-norm update happened
    assert x.dtype == torch.float32 and x.device.type == "cpu" and not x.requires_grad
    assert torch.equal(x, ref_x) and torch.equal(y, ref_y)


def test_fields_fill_key_function_and_the_batch_itself() -> None:
    net, data = Net(), batches()
    for b, caps in zip(data, (["a", "b", "c", "d"], ("e", "f", "g")), strict=True):
        b["caption"] = caps
    x, ids, labels, captions = embed_loader(
        net.embed, data, "cpu", key=lambda b: b["image"] * 2, fields=("index", "label", "caption"), fill=-1
    )
    with torch.no_grad():
        net.eval()
        assert torch.equal(x, torch.cat([net.embed(b["image"] * 2) for b in data]))
    assert ids.tolist() == [0, 1, 2, 3, -1, -1, -1] and labels.tolist() == list(range(7))
    assert captions == list("abcdefg")
    with pytest.raises(KeyError):  # without fill a missing field is a KeyError (contrastlab-eval reports it)
        embed_loader(net.embed, data, fields=("index",))
    # key=None: the batch itself is the input, e.g. chunks of a tensor or lists of strings; fields=() -> (features,)
    (chunks,) = embed_loader(net.embed, torch.cat([b["image"] for b in data]).split(2), key=None, fields=())
    assert torch.allclose(chunks, embed_loader(net.embed, data)[0], atol=1e-6)  # same rows, other batches
    (lengths,) = embed_loader(
        lambda s: torch.tensor([[len(t)] for t in s]), [["ab", "c"], ["def"]], key=None, fields=()
    )
    assert lengths.dtype == torch.float32 and lengths.flatten().tolist() == [2.0, 1.0, 3.0]


def test_mode_is_restored_when_the_function_raises() -> None:
    net = Net().train()

    def fails(x: Tensor) -> Tensor:
        assert not net.training
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        embed_loader(fails, batches(), module=net)
    assert net.training


def test_embed_pairs_equals_the_chunked_loop_in_eval_mode() -> None:
    net = Net().train()
    g = torch.Generator().manual_seed(2)
    views = (torch.randn(7, 5, generator=g), torch.randn(7, 5, generator=g))
    a, b = embed_pairs(net.embed, views, "cpu", batch_size=3)
    assert net.training
    net.eval()
    with torch.no_grad():
        ref = [torch.cat([net.embed(v) for v in vs.split(3)]) for vs in views]
    assert torch.equal(a, ref[0]) and torch.equal(b, ref[1])
