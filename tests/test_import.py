import subprocess
import sys

# tqdm is not listed: torch itself imports it.
HEAVY = ("matplotlib", "tensorboard", "gymnasium", "transformers", "peft", "PIL")


def test_import_is_light():
    code = (
        "import sys, fastadapt, fastadapt.tasks, fastadapt.models, fastadapt.engine, fastadapt.data;"
        f"print([m for m in {HEAVY!r} if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_version():
    import fastadapt

    assert fastadapt.__version__.count(".") == 2
