"""Runs tests/test_openvino.py in a process of its own (see the note there), and fails if any of it fails."""

import os
import subprocess
import sys
from pathlib import Path

import pytest


# the runtime is not pinned there: `auto` chooses as it does for users on this machine
ENV = {**{k: v for k, v in os.environ.items() if k != "VITKIT_AUTO_RUNTIME"}, "VITKIT_OPENVINO_TESTS": "1"}


def test_openvino_runtime_in_its_own_process(tmp_path):
    pytest.importorskip("openvino")
    here = Path(__file__).resolve().parent
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(here / "test_openvino.py"),
                        "--basetemp", str(tmp_path / "t")], capture_output=True, text=True, timeout=600,
                       env=ENV, cwd=here.parent)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert " passed" in r.stdout and "failed" not in r.stdout and "skipped" not in r.stdout, r.stdout[-1000:]
