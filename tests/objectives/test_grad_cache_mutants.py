"""GradCache edge cases found by mutation testing (``make mutate``): a stream whose rows never reach the
loss before one that does (autograd hands it a zero gradient, so it adds zeros), and an autocast dtype other
than the device's default replayed as it was, and a plan on a CUDA device saving that device's CUDA RNG state
(torch.cuda faked, so it runs without a GPU)."""

from __future__ import annotations

import torch
from torch import nn

from contrastlab.objectives.grad_cache import GradCache, _Plan


def test_a_stream_without_gradient_does_not_stop_the_replay_of_the_next() -> None:
    towers = nn.ModuleDict({"a": nn.Linear(4, 3), "b": nn.Linear(4, 3)}).double()
    xa, xb = torch.randn(6, 4, dtype=torch.float64), torch.randn(6, 4, dtype=torch.float64)
    weights = torch.randn(6, 3, dtype=torch.float64)

    za, zb = GradCache(2)(towers, [(towers["a"], xa), (towers["b"], xb)])
    (weights * zb).sum().backward()  # za is not used: autograd sends its stream a zero gradient
    got = {n: p.grad.clone() for n, p in towers.named_parameters() if p.grad is not None}
    for name in ("a.weight", "a.bias"):
        assert torch.equal(got.pop(name), torch.zeros_like(towers.get_parameter(name)))

    towers.zero_grad(set_to_none=True)
    (weights * towers["b"](xb)).sum().backward()  # the plain step
    want = {n: p.grad for n, p in towers.named_parameters() if p.grad is not None}
    assert set(got) == set(want) == {"b.weight", "b.bias"}
    for name, g in want.items():
        torch.testing.assert_close(got[name], g, rtol=1e-12, atol=1e-12)


def test_a_float16_autocast_is_replayed_as_float16() -> None:
    """CPU autocast defaults to bfloat16: the replay must re-enter the dtype the forward used, not the default."""
    layer = nn.Linear(4, 3)
    seen: list[torch.dtype] = []

    def embed(x: torch.Tensor) -> torch.Tensor:
        out = layer(x)
        seen.append(out.dtype)
        return out

    with torch.autocast("cpu", dtype=torch.float16):
        (z,) = GradCache(3)(layer, [(embed, torch.randn(6, 4))])
    z.float().sum().backward()
    assert seen == [torch.float16] * 4  # 2 micro-batches embedded, then 2 replayed
    assert layer.weight.grad is not None and torch.isfinite(layer.weight.grad).all()


def test_a_cuda_plan_saves_the_cuda_rng_state_of_its_own_device(monkeypatch) -> None:
    asked: list[object] = []
    state = torch.arange(3, dtype=torch.uint8)

    def get_rng_state(device: object = "cuda") -> torch.Tensor:
        asked.append(device)
        return state

    monkeypatch.setattr(torch.cuda, "get_rng_state", get_rng_state)
    device = torch.device("cuda", 1)  # not the current device: the plan must name it
    cpu_state, cuda_state = _Plan([], 2, device).save_rng()
    assert torch.equal(cpu_state, torch.get_rng_state()) and cuda_state is state and asked == [device]
    assert _Plan([], 2, torch.device("cpu")).save_rng()[1] is None and asked == [device]  # CPU: no CUDA state
