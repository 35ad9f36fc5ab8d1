import torch

from fastadapt.engine import build
from fastadapt.engine.trainer import resolve_config


def test_channels_last_changes_the_layout_not_the_values():
    overrides = ["backbone.args.hidden=8", "train.seed=3"]
    plain = build.build_model(resolve_config("omniglot/protonet-5w1s", overrides))
    fast = build.build_model(resolve_config("omniglot/protonet-5w1s", [*overrides, "train.channels_last=true"]))
    convs = [name for name, p in fast.named_parameters() if p.dim() == 4]
    assert convs and all(
        dict(fast.named_parameters())[n].is_contiguous(memory_format=torch.channels_last) for n in convs
    )
    for (name, a), (_, b) in zip(plain.state_dict().items(), fast.state_dict().items()):
        torch.testing.assert_close(a, b, msg=name)
    x = torch.rand(6, 1, 28, 28)
    plain.eval(), fast.eval()
    torch.testing.assert_close(fast.backbone(x), plain.backbone(x), rtol=1e-5, atol=1e-5)
