import os

import pytest
import torch

# Tests that compare exact values run in fp32 on every kind of machine (on a CPU with native bf16,
# `auto` would pick bf16); set before any test so subprocesses (the CLI, torchrun) inherit it too.
os.environ["VITKIT_AUTO_PRECISION"] = "fp32"
# ... and exported .onnx files on onnxruntime: OpenVINO's runtime stays out of the main test process
# (tests/test_openvino_isolated.py runs the OpenVINO tests in one of their own, with this unset).
if os.environ.get("VITKIT_OPENVINO_TESTS") != "1":
    os.environ["VITKIT_AUTO_RUNTIME"] = "onnxruntime"


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def mnist_dir():
    from pathlib import Path

    d = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"
    if not d.is_dir():
        pytest.skip("../shared/data/mnist is not present")
    return d


def pytest_collection_modifyitems(items):
    """Run the JAX parity tests last: once JAX's threads exist, forking DataLoader workers may deadlock."""
    items.sort(key=lambda item: "test_official_parity" in item.nodeid)
