"""Batch-split threading: slices of a batch in parallel threads give the whole batch's outputs and gradients,
the training run stays reproducible, and what cannot be split is refused with a reason."""

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from test_train import quick_cfg
from vitkit import VitkitError
from vitkit.models import create_model
from vitkit.models.batch_split import SplitBatch, has_random_layers, map_slices, split_backward
from vitkit.models.inference import inference_model
from vitkit.train import train


@pytest.mark.parametrize("name,size,batch,parts", [("vit_mnist_patch7_28", 28, 7, 3),
                                                   ("vit_mnist_r_28", 28, 8, 2)])
def test_split_gradients_equal_whole_batch(name, size, batch, parts):
    torch.manual_seed(0)
    model = create_model(name)
    params = list(model.parameters())
    x, y = torch.randn(batch, 1, size, size), torch.randint(0, 10, (batch,))

    def forward(xs, ys):
        logits = model(xs)
        return logits, F.cross_entropy(logits, ys)

    logits, loss = forward(x, y)
    (loss * 0.5).backward()
    whole = [p.grad.clone() for p in params]
    model.zero_grad(set_to_none=True)
    split_loss, split_logits = split_backward(forward, params, x, y, parts, scale=0.5)
    assert torch.allclose(split_loss, loss, atol=1e-6)
    assert torch.allclose(split_logits, logits, atol=1e-5)
    for (n, p), g in zip(model.named_parameters(), whole):
        assert torch.allclose(p.grad, g, atol=1e-6, rtol=1e-4), n


def test_split_backward_adds_to_existing_gradients_and_skips_nonfinite():
    model = torch.nn.Linear(4, 3)
    params = list(model.parameters())
    x, y = torch.randn(6, 4), torch.randint(0, 3, (6,))

    def forward(xs, ys):
        logits = model(xs)
        return logits, F.cross_entropy(logits, ys)

    forward(x, y)[1].backward()
    once = [p.grad.clone() for p in params]
    split_backward(forward, params, x, y, 2)  # accumulation: a second micro-batch adds to .grad
    assert all(torch.allclose(p.grad, 2 * g, atol=1e-6) for p, g in zip(params, once))
    x[4, 0] = float("nan")
    loss, _ = split_backward(forward, params, x, y, 2)
    assert not torch.isfinite(loss)
    assert all(torch.allclose(p.grad, 2 * g, atol=1e-6) for p, g in zip(params, once))  # nothing added


def test_split_inference_matches_and_keeps_the_model_interface():
    torch.manual_seed(0)
    model = inference_model(create_model("vit_mnist_patch7_28"), split=True)
    assert isinstance(model, SplitBatch) and model.num_classes == 10
    x = torch.randn(9, 1, 28, 28)
    with torch.inference_mode():
        out = model(x)
        whole = model.model(x)
        single = model(x[:1])
    assert out.is_inference() and torch.allclose(out, whole, atol=1e-5)
    assert torch.allclose(single, whole[:1], atol=1e-5)


def test_map_slices_carries_grad_mode_and_restores_threads():
    threads = torch.get_num_threads()
    with torch.no_grad():
        modes = map_slices(lambda _: torch.is_grad_enabled(), [0, 1, 2])
    assert modes == [False, False, False]
    assert map_slices(lambda _: torch.is_grad_enabled(), [0, 1]) == [True, True]
    assert map_slices(lambda _: torch.get_num_threads(), [0, 1]) == [1, 1]
    assert torch.get_num_threads() == threads
    with pytest.raises(ZeroDivisionError):
        map_slices(lambda v: 1 / v, [1, 0])
    assert torch.get_num_threads() == threads


def test_random_layers_are_detected():
    assert not has_random_layers(create_model("vit_mnist_patch7_28"))
    assert has_random_layers(create_model("vit_mnist_patch7_28", drop_path_rate=0.1))
    assert has_random_layers(create_model("vit_mnist_patch7_28", attn_drop_rate=0.1))


SPLIT = ["train.threads=2", "train.deterministic=true", "optim.accum_steps=2"]


def test_split_training_is_reproducible_across_interrupt_and_resume(tmp_path):
    full = train(quick_cfg(tmp_path / "full", *SPLIT, "train.batch_split=on"), progress=False)
    assert full["batch_split_threads"] == 2

    def stop(trainer):
        if trainer.step == 11:
            trainer.request_stop()

    train(quick_cfg(tmp_path / "part", *SPLIT, "train.batch_split=on"), progress=False, on_step=stop)
    resumed = train(resume=tmp_path / "part", progress=False)
    a = load_file(tmp_path / "full" / "checkpoints" / "last.safetensors")
    b = load_file(tmp_path / "part" / "checkpoints" / "last.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
    assert resumed["test_acc"] == full["test_acc"]


def test_split_training_follows_the_whole_batch_run(tmp_path):
    sgd = ["optim.name=sgd", "optim.lr=0.05", "train.epochs=1"]
    on = train(quick_cfg(tmp_path / "on", *SPLIT, *sgd, "train.batch_split=on"), progress=False)
    off = train(quick_cfg(tmp_path / "off", *SPLIT, *sgd, "train.batch_split=off"), progress=False)
    assert (on["batch_split_threads"], off["batch_split_threads"]) == (2, 1)
    a = load_file(tmp_path / "on" / "checkpoints" / "last.safetensors")
    b = load_file(tmp_path / "off" / "checkpoints" / "last.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-5


def test_split_on_is_refused_for_stochastic_models(tmp_path):
    with pytest.raises(VitkitError, match="batch_split=on is not possible here: the model has dropout"):
        train(quick_cfg(tmp_path / "r", "train.batch_split=on", "model.drop_rate=0.1"), progress=False)
    auto = train(quick_cfg(tmp_path / "a", "train.threads=2", "model.drop_rate=0.1", "train.epochs=1"),
                 progress=False)
    assert auto["batch_split_threads"] == 1
