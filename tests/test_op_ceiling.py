"""``benchmarks/op_ceiling.py``: the recorded calls replay at the step's shapes, layouts and FLOPs."""

import importlib.util
from pathlib import Path

import torch
from torch import nn

_SPEC = importlib.util.spec_from_file_location(
    "op_ceiling", Path(__file__).resolve().parents[1] / "benchmarks" / "op_ceiling.py")
op_ceiling = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(op_ceiling)  # the script puts benchmarks/ on sys.path itself


def test_recorded_calls_replay_with_the_same_layout_and_flops():
    conv = nn.Conv2d(3, 8, 3, padding=1).to(memory_format=torch.channels_last)
    head = nn.Linear(8, 5)
    x = torch.randn(4, 3, 6, 6).contiguous(memory_format=torch.channels_last)
    record = op_ceiling.Record()
    with record:
        head(conv(x).mean((2, 3))).sum().backward()
    names = sorted(func.__name__ for func, _, _ in record.calls)
    assert names == ["addmm.default", "convolution.default", "convolution_backward.default", "mm.default", "mm.default"]
    with torch.utils.flop_counter.FlopCounterMode(display=False) as counter:
        head(conv(x).mean((2, 3))).sum().backward()
    replayed = 0
    for call, count in record.calls.items():
        func, args, _ = call
        built = op_ceiling.build(args, torch.Generator().manual_seed(0))
        for described, tensor in zip(args, built):
            if isinstance(described, tuple) and described[:1] == ("tensor",):
                assert (tuple(tensor.shape), tuple(tensor.stride()), tensor.dtype) == described[1:]
        seconds, flops = op_ceiling.fastest(call, threads=1, budget_s=0.001)
        assert seconds > 0
        replayed += count * flops
    assert replayed == counter.get_total_flops()  # every counted FLOP of the step, once
