import pytest

import fastadapt
from fastadapt.cli import main


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"fastadapt {fastadapt.__version__}"


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "data" in capsys.readouterr().out


def test_unknown_dataset(capsys):
    with pytest.raises(SystemExit):
        main(["data", "imagenet"])
    assert "invalid choice" in capsys.readouterr().err
