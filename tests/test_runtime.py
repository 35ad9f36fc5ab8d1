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


def test_cpu_flags_read_x86_and_arm_lines(tmp_path):
    from fastadapt.runtime import cpu_flags, cpu_model

    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu avx2 amx_bf16 avx512_bf16\n\nprocessor\t: 1\nflags\t: fpu\n")
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\n")
    assert cpu_flags(x86) == {"fpu", "avx2", "amx_bf16", "avx512_bf16"}  # the first processor's
    assert "bf16" in cpu_flags(arm)
    assert cpu_flags(tmp_path / "missing") == frozenset()
    assert cpu_model(x86) == "Some CPU" and cpu_model(arm)  # Arm lists no model name: platform's answer
    generic = tmp_path / "generic"
    generic.write_text("processor\t: 0\ncpu family\t: 23\nmodel\t\t: 49\nmodel name\t: AMD EPYC\nflags\t: avx2\n")
    assert cpu_model(generic) == "AMD EPYC (family 23, model 49)"  # no model number in the name: told apart
    numbered = tmp_path / "numbered"
    numbered.write_text("cpu family\t: 6\nmodel\t\t: 143\nmodel name\t: Intel(R) Xeon(R) Platinum 8481C CPU\n")
    assert cpu_model(numbered) == "Intel(R) Xeon(R) Platinum 8481C CPU"


def test_auto_precision_is_bfloat16_only_where_native_and_emulated_bfloat16_warns(monkeypatch):
    import warnings

    import fastadapt.runtime as runtime

    a = torch.randn(4, 4)
    for native in (True, False):
        monkeypatch.setattr(runtime, "native_bfloat16", lambda device_type, native=native: native)
        assert runtime.resolve_precision("auto", "cpu") == ("bfloat16" if native else "float32")
        with runtime.compute_precision("auto", "cpu"):
            assert (a @ a).dtype == (torch.bfloat16 if native else torch.float32)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert runtime.resolve_precision("bfloat16", "cpu") == "bfloat16"  # honoured either way
            assert runtime.resolve_precision("float32", "cpu") == "float32"
        assert [str(w.message).split(":")[0] for w in caught] == (
            [] if native else ["precision='bfloat16' on a cpu without native bfloat16 instructions"])
        assert all(w.category is RuntimeWarning for w in caught)


def test_native_bfloat16_follows_the_cpu_flags():
    from fastadapt.runtime import cpu_flags, native_bfloat16

    assert native_bfloat16("cpu") == bool(cpu_flags() & {"amx_bf16", "avx512_bf16", "bf16"})
    assert native_bfloat16("meta")  # other devices: their autocast decides
