"""Loading fastadapt's compiled extension: the stamp that skips ``torch.utils.cpp_extension``,
what is reported when it cannot be built."""

import json
import subprocess
import sys

import pytest

import fastadapt.double_backward as db
import fastadapt.extension as ext


def test_missing_ninja_is_reported(monkeypatch):
    import torch.utils.cpp_extension as cpp

    def no_ninja():
        raise RuntimeError("Ninja is required to load C++ extensions")

    attempts = []
    monkeypatch.setattr(ext, "_module", None)
    monkeypatch.setattr(ext, "_error", None)
    monkeypatch.setattr(ext, "_load_built", lambda: None)  # as on a machine where it was never built
    monkeypatch.setattr(cpp, "verify_ninja_availability", lambda: attempts.append(1) or no_ninja())
    with pytest.raises(RuntimeError, match=r"needs ninja .*fastadapt\[kernels\]"):
        ext.load_extension()
    assert not ext.extension_available()
    assert not db.kernels_available()  # the kernels' name for it
    assert len(attempts) == 1  # the failure is remembered, not retried on every call


def test_a_built_library_loads_without_cpp_extension():
    ext.load_extension()  # builds (or loads) it here, and stamps it
    code = ("import sys, torch, torch.nn.functional as F; import fastadapt.double_backward as db; db.load_kernels(); "
            "x = torch.randn(2, 1, 5, 5); w = torch.randn(3, 1, 3, 3)\n"
            "with db.explicit_double_backward(): y = F.conv2d(x, w)\n"
            "print('torch.utils.cpp_extension' in sys.modules, torch.allclose(y, F.conv2d(x, w)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "True"]


def test_a_stale_stamp_is_not_loaded(monkeypatch):
    ext.load_extension()
    assert ext._load_built() is not None
    monkeypatch.setattr(ext, "build_key", lambda: {"source_sha256": "another source"})
    assert ext._load_built() is None


def test_a_stamp_naming_another_module_is_not_loaded(monkeypatch, tmp_path):
    ext.load_extension()
    stamp = json.loads(ext.stamp_path().read_text())
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    ext.stamp_path().write_text(json.dumps(stamp | {"module": "fastadapt_double_backward_v9"}))  # as after a rebuild
    assert ext._load_built() is None
    ext.stamp_path().write_text(json.dumps(stamp))
    assert ext._load_built() is not None
