import pytest
import torch


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
