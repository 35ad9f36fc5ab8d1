import platform
import subprocess
import sys

import pytest
import torch


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_tune_allocator_applies_on_glibc():
    # in a child process: the setting is process-wide
    code = "from fastadapt.runtime import tune_allocator; print(tune_allocator())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"



def test_compute_precision_autocasts_matmuls_only_when_asked():
    from fastadapt.runtime import compute_precision

    a = torch.randn(4, 4)
    with compute_precision("float32", "cpu"):
        assert (a @ a).dtype == torch.float32
    with compute_precision("bfloat16", "cpu"):
        assert (a @ a).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="precision must be one of .* got 'fp16'"):
        compute_precision("fp16", "cpu")
