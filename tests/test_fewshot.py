"""Few-shot linear evaluation: the ridge solution against its textbook form, and the command."""

import json

import numpy as np
import pytest
import torch

from vitkit.cli import main
from vitkit.evaluate.fewshot import BIAS_FEATURE, ridge_fit, ridge_predict


def textbook_ridge(x: np.ndarray, y: np.ndarray, k: int, l2: float) -> np.ndarray:
    mean, std = x.mean(0), x.std(0) + 1e-5
    xb = np.hstack([(x - mean) / std, np.full((len(x), 1), BIAS_FEATURE)])
    t = 2.0 * np.eye(k)[y] - 1.0
    return np.linalg.inv(xb.T @ xb + l2 * np.eye(xb.shape[1])) @ xb.T @ t


@pytest.mark.parametrize("n,d", [(40, 6), (6, 30)])   # both forms: N >= D and D > N
def test_ridge_equals_the_textbook_solution(n, d):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(n, d)), rng.integers(0, 3, n)
    for l2 in (0.5, 1024.0):
        fit = ridge_fit(torch.from_numpy(x), torch.from_numpy(y), 3, l2)
        np.testing.assert_allclose(fit["w"].numpy(), textbook_ridge(x, y, 3, l2), rtol=1e-6, atol=1e-9)


def test_separated_classes_are_classified_perfectly_from_few_shots():
    rng = np.random.default_rng(1)
    centres = rng.normal(scale=10.0, size=(4, 16))
    def sample(per):
        y = np.repeat(np.arange(4), per)
        return torch.from_numpy(centres[y] + rng.normal(size=(len(y), 16))), torch.from_numpy(y)
    x_train, y_train = sample(3)
    x_test, y_test = sample(50)
    fit = ridge_fit(x_train, y_train, 4, l2=1.0)
    assert (ridge_predict(fit, x_test) == y_test).all()


def test_fewshot_command(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", "synthetic", "--epochs", "1", "--out", str(run), "--no-progress",
                 "--set", "model.img_size=16", "--set", "model.depth=2", "--set", "train.tensorboard=false"]) == 0
    capsys.readouterr()
    assert main(["fewshot", "--checkpoint", str(run), "--data", "synthetic", "--shots", "1,4", "--draws", "3",
                 "--out", str(tmp_path / "fs")]) == 0
    assert "| 4 |" in capsys.readouterr().out
    result = json.loads((tmp_path / "fs" / "fewshot.json").read_text())
    assert [r["shots"] for r in result["rows"]] == [1, 4]
    for r in result["rows"]:
        assert len(r["accuracies"]) == 3 and 0 <= r["min"] <= r["mean"] <= r["max"] <= 1
