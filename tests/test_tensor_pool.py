"""The tensor pool (``fastadapt.tensor_pool``): reuse by exact size, limits, threads, fork, and
results unchanged. It is process-wide, so every case runs in a child process."""

import json
import subprocess
import sys
import textwrap

import pytest

from fastadapt.extension import extension_available

pytestmark = pytest.mark.skipif(not extension_available(), reason="needs fastadapt's C++ extension")


def _child(code: str) -> dict:
    """Run ``code`` (which sets ``out``) in a fresh interpreter; returns ``out``."""
    prelude = (
        "import json, os, threading, torch\n"
        "from fastadapt.tensor_pool import use_tensor_pool, pool_stats, release_cached, reset_peak\n"
    )
    script = prelude + textwrap.dedent(code) + "\nprint(json.dumps(out))\n"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_blocks_are_reused_by_exact_size_and_small_ones_are_not_pooled():
    out = _child("""
        out = {"before": pool_stats(), "installed": use_tensor_pool(min_bytes=2**16)}
        a = torch.empty(100_000)  # 400 KB: pooled
        first = a.data_ptr()
        del a
        b = torch.empty(100_000)
        out["same_block"] = b.data_ptr() == first
        c = torch.empty(100_001)  # another page count: not that block
        small = torch.empty(1000)  # 4 KB: the previous allocator's
        out["after"] = pool_stats()
        out["live"] = (b.untyped_storage().nbytes(), c.untyped_storage().nbytes())
    """)
    assert out["before"] == {"installed": 0}
    assert out["installed"] is True
    assert out["same_block"]
    stats = out["after"]
    assert stats["installed"] == 1 and stats["hits"] == 1 and stats["misses"] == 2
    pages = [(n + 4095) // 4096 * 4096 for n in out["live"]]
    assert stats["live_bytes"] == sum(pages) and stats["cached_bytes"] == 0


def test_reset_peak_restarts_the_peak_from_the_live_bytes():
    out = _child("""
        use_tensor_pool()
        kept = torch.empty(2**16)  # 256 KiB
        del kept
        big = torch.empty(2**18)  # 1 MiB, live
        out = {"old": reset_peak(), "after_reset": pool_stats()["peak_live_bytes"]}
        tmp = torch.empty(2**17)  # 512 KiB, then freed: a temporary the peak remembers
        del tmp
        out["peak"] = pool_stats()["peak_live_bytes"]
    """)
    assert out["old"] == 2**20 and out["after_reset"] == 2**20
    assert out["peak"] == 2**20 + 2**19


def test_max_cached_bounds_what_is_kept_and_release_cached_unmaps_it():
    out = _child("""
        use_tensor_pool(max_cached=2**20)
        blocks = [torch.empty(2**17) for _ in range(4)]  # 512 KiB each
        del blocks  # two fit under the 1 MiB cap, two are unmapped
        out = {"freed": pool_stats()}
        out["released"] = release_cached()
        out["after"] = pool_stats()
    """)
    assert out["freed"]["cached_bytes"] == 2**20 and out["freed"]["mapped_bytes"] == 2**20
    assert out["freed"]["live_bytes"] == 0
    assert out["released"] == 2**20
    assert out["after"]["cached_bytes"] == 0 and out["after"]["mapped_bytes"] == 0


def test_training_steps_give_the_same_numbers_with_and_without_the_pool():
    code = """
        import torch.nn.functional as F
        from fastadapt.models import Conv4
        if {pool}:
            assert use_tensor_pool(min_bytes=1)  # every tensor, oneDNN's raw allocations included
        torch.manual_seed(0)
        model = Conv4(1, hidden=16, out_features=5)
        x, y = torch.randn(20, 1, 28, 28), torch.arange(20) % 5
        for _ in range(2):
            loss = F.cross_entropy(model(x), y)
            (g,) = torch.autograd.grad(loss, model.features[0].weight, create_graph=True)
            (g.square().sum() + loss).backward()
        out = {{"grads": [p.grad.flatten().tolist() for p in model.parameters()], "stats": pool_stats()}}
    """
    plain, pooled = _child(code.format(pool=False)), _child(code.format(pool=True))
    assert pooled["grads"] == plain["grads"]  # bitwise
    assert pooled["stats"]["hits"] > 0 and plain["stats"] == {"installed": 0}


def test_threads_share_the_pool():
    out = _child("""
        use_tensor_pool()
        errors = []
        def work(seed):
            try:
                g = torch.Generator().manual_seed(seed)
                for _ in range(200):
                    t = torch.randn(int(torch.randint(20_000, 40_000, (1,), generator=g)), generator=g)
                    assert torch.isfinite(t.sum())
            except BaseException as e:
                errors.append(repr(e))
        threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
        [t.start() for t in threads]; [t.join() for t in threads]
        out = {"errors": errors, "stats": pool_stats()}
    """)
    assert out["errors"] == []
    stats = out["stats"]
    assert stats["live_bytes"] == 0 and stats["hits"] + stats["misses"] == 800
    assert stats["mapped_bytes"] == stats["cached_bytes"]


def test_a_forked_child_allocates_through_the_pool():
    out = _child("""
        use_tensor_pool()
        keep = torch.empty(100_000)
        pid = os.fork()
        if pid == 0:
            t = torch.ones(200_000)
            os._exit(0 if float(t.sum()) == 200_000 and pool_stats()["misses"] == 2 else 1)
        _, status = os.waitpid(pid, 0)
        out = {"status": status}
    """)
    assert out["status"] == 0


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"min_bytes": 0}, "min_bytes must be an int >= 1, got 0"),
    ({"min_bytes": 4096, "max_block": 100}, "max_block must be an int >= 4096, got 100"),
    ({"max_cached": -1}, "max_cached must be an int >= 0, got -1"),
    ({"min_bytes": True}, "min_bytes must be an int >= 1, got True"),
])
def test_limits_are_checked(kwargs, message):
    from fastadapt.tensor_pool import use_tensor_pool

    with pytest.raises(ValueError, match=message):
        use_tensor_pool(**kwargs)


def test_without_the_extension_nothing_is_installed(monkeypatch):
    import fastadapt.tensor_pool as tp

    monkeypatch.setattr(tp, "extension_available", lambda: False)
    assert tp.use_tensor_pool() is False
