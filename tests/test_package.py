"""Package boundaries and entry points."""

import subprocess
import sys


def test_kinetics_never_imports_torch():
    code = "import sys, kinetics, kinetics.__main__, kinetics.workflow, kinetics.parallel, kinetics.preprocess; " \
           "print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_cli_help_lists_the_commands():
    for package, commands in [("kinetics", ["fit", "fit-roi", "t1map", "aif", "dro"]), ("ssl_rcc", ["demo"])]:
        out = subprocess.run([sys.executable, "-m", package, "--help"], capture_output=True, text=True,
                             env={"PAGER": "cat", "PATH": ""})
        assert out.returncode == 0, out.stderr
        for command in commands:
            assert command in out.stdout + out.stderr


def test_kinetics_fit_help_documents_units():
    out = subprocess.run([sys.executable, "-m", "kinetics", "fit", "--help"], capture_output=True, text=True,
                         env={"PAGER": "cat", "PATH": ""})
    assert out.returncode == 0
    assert "seconds" in out.stderr + out.stdout and "plasma, mM" in out.stderr + out.stdout
