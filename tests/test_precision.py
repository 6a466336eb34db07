"""Precision by capability: the rule on mocked machines, bf16 within a stated tolerance of fp32 (on any
CPU: emulated where not native), the choice printed and recorded, and `vitkit env`."""

import json

import pytest
import torch

from vitkit import VitkitError, precision
from vitkit.analysis import mean_attention_distance, rollout
from vitkit.cli import main
from vitkit.config import build_config
from vitkit.machine import describe, native_bf16_cpu
from vitkit.models import create_model
from vitkit.precision import decide, in_precision
from vitkit.train import train

# bf16 keeps 8 significant bits: logits of these small random-weight models stay within 3% of their range.
LOGIT_TOL = 0.03
ANALYSIS_TOL = 0.03   # rollout maps (each normalised to max 1) and attention distances, relative


@pytest.fixture
def unpinned(monkeypatch):
    monkeypatch.delenv(precision.PIN_ENV, raising=False)


@pytest.mark.parametrize("device, cpu_bf16, gpu_bf16, want", [
    ("cpu", True, False, "bf16"),    # AMX-BF16 / AVX512-BF16 (Sapphire Rapids, Zen 4)
    ("cpu", False, False, "fp32"),   # AVX2 only (Zen 3): bf16 would be emulated
    ("cuda", False, True, "bf16"),   # Ampere and later
    ("cuda", True, False, "fp32"),   # an older GPU: the CPU's capability does not count
    ("mps", True, True, "fp32"),
])
def test_auto_picks_bf16_where_the_hardware_computes_it(unpinned, device, cpu_bf16, gpu_bf16, want):
    chosen, why = decide("auto", device, cpu_bf16, gpu_bf16)
    assert chosen == want and why.startswith("auto")
    assert decide("fp16", device, cpu_bf16, gpu_bf16) == ("fp16", "as asked")  # an explicit choice stands


@pytest.mark.parametrize("speedup, want", [(None, "bf16"), (2.3, "bf16"), (1.1, "bf16"), (1.05, "fp32"),
                                           (0.6, "fp32")])  # 0.6: a Xeon with AVX512-BF16 but no AMX, measured
def test_native_bf16_counts_only_where_the_probe_finds_it_faster(unpinned, speedup, want):
    chosen, why = decide("auto", "cpu", True, False, speedup)
    assert chosen == want
    if want == "fp32":
        assert f"{speedup:.2f}x fp32's speed here" in why
    assert decide("auto", "cpu", False, False, 3.0)[0] == "fp32"  # no native bf16: the probe does not count


def test_the_probe_runs_once_per_machine_and_is_cached(unpinned, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(precision, "_speedup", {})
    calls = []
    monkeypatch.setattr(precision, "measure_bf16_speedup", lambda: calls.append(1) or 0.61)
    assert precision.cpu_bf16_speedup() == 0.61 and precision.cpu_bf16_speedup() == 0.61
    monkeypatch.setattr(precision, "_speedup", {})  # a new process reads the file
    assert precision.cpu_bf16_speedup() == 0.61 and calls == [1]
    cached = json.loads((tmp_path / "vitkit" / "bf16_probe.json").read_text())
    assert list(cached.values()) == [0.61] and describe()["cpu"] in next(iter(cached))
    (tmp_path / "vitkit" / "bf16_probe.json").write_text("{not json")  # a damaged cache is measured again
    monkeypatch.setattr(precision, "_speedup", {})
    assert precision.cpu_bf16_speedup() == 0.61 and calls == [1, 1]


def test_the_probe_measures_a_positive_ratio():
    assert 0.05 < precision.measure_bf16_speedup(128, 3) < 20


def test_the_pin_wins_over_the_hardware_and_bad_names_are_refused(monkeypatch):
    monkeypatch.setenv(precision.PIN_ENV, "fp32")
    assert decide("auto", "cpu", True, True)[0] == "fp32"
    monkeypatch.setenv(precision.PIN_ENV, "int4")
    with pytest.raises(VitkitError, match="VITKIT_AUTO_PRECISION='int4'"):
        decide("auto", "cpu", True, True)
    with pytest.raises(VitkitError, match="unknown precision 'bf61'"):
        decide("bf61", "cpu", True, True)


def test_the_machine_description_reads_this_cpu():
    info = describe()
    assert info["cpu"] and info["logical_cpus"] >= 1 and info["versions"]["torch"] == torch.__version__.split("+")[0] \
        or info["versions"]["torch"].startswith(torch.__version__.split("+")[0])
    assert native_bf16_cpu(info) == bool({"amx_bf16", "avx512_bf16"} & set(info["isa"]))
    assert native_bf16_cpu({"isa": ["avx2", "avx512_bf16"]}) and not native_bf16_cpu({"isa": ["avx2"]})


@pytest.mark.parametrize("name, kw", [("vit_digits_patch4_8", {}), ("vit_mnist_patch7_28", {"pos_embed": "rel"}),
                                      ("vit_mnist_r_28", {})])
def test_bf16_logits_stay_within_the_stated_tolerance_of_fp32(name, kw):
    torch.manual_seed(0)
    ref = create_model(name, **kw).eval()
    torch.nn.init.normal_(ref.head.weight, std=0.05)
    x = torch.randn(16, ref.cfg.in_chans, *ref.cfg.img_size)
    with torch.no_grad():
        want = ref(x)
        low = create_model(name, **kw).eval()
        low.load_state_dict(ref.state_dict())
        got = in_precision(low, "bf16")(x)
    assert got.dtype == torch.bfloat16
    spread = (want.max() - want.min()).item()
    assert (got.float() - want).abs().max().item() <= LOGIT_TOL * spread
    assert (got.float().argmax(1) == want.argmax(1)).float().mean() >= 0.9


def test_analysis_numbers_in_bf16_stay_within_the_stated_tolerance():
    torch.manual_seed(0)
    ref = create_model("vit_mnist_patch4_28").eval()
    low = create_model("vit_mnist_patch4_28").eval()
    low.load_state_dict(ref.state_dict())
    low = in_precision(low, "bf16")
    x = torch.randn(8, 1, 28, 28)
    with torch.no_grad():
        assert (rollout(low, x).float() - rollout(ref, x)).abs().max() <= ANALYSIS_TOL
        d_ref, d_low = mean_attention_distance(ref, x), mean_attention_distance(low, x)
    assert ((d_low - d_ref).abs() / d_ref).max() <= ANALYSIS_TOL


def test_what_the_run_computed_in_is_printed_and_recorded(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--data", "synthetic", "--model", "vit_digits_patch4_8", "--set", "model.img_size=16",
                 "--set", "model.depth=1", "--epochs", "1", "--out", str(out), "--no-progress",
                 "--set", "train.tensorboard=false", "--precision", "bf16"]) == 0
    assert "precision: bf16 (as asked)" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["precision"] == "bf16" and summary["machine"]["cpu"] == describe()["cpu"]
    assert main(["eval", "--checkpoint", str(out), "--data", "synthetic", "--json"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["precision"] == "fp32" and "pinned" in ev["precision_reason"]  # the tests pin auto to fp32


def test_a_run_folder_written_with_train_amp_still_resumes(tmp_path):
    cfg = tmp_path / "config.yaml"
    cfg.write_text("train:\n  amp: none\n  epochs: 3\n")
    assert build_config(cfg).train.precision == "fp32"
    cfg.write_text("train:\n  amp: bf16\n")
    assert build_config(cfg).train.precision == "bf16"


def test_an_exported_file_runs_as_it_was_written(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    run = tmp_path / "run"
    train(build_config(None, ["model.name=vit_digits_patch4_8", "model.depth=1", "train.epochs=1",
                              "train.tensorboard=false", f"train.out={run}"]), progress=False)
    assert main(["export", "--checkpoint", str(run), "--out", str(tmp_path / "m.onnx")]) == 0
    import onnx
    meta = json.loads({p.key: p.value for p in onnx.load(tmp_path / "m.onnx").metadata_props}["vitkit"])
    assert meta["machine"]["cpu"] == describe()["cpu"]
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(tmp_path / "m.onnx"), "--data", "digits", "--precision", "bf16"]) == 2
    assert "runs on onnxruntime in the precision it was written in" in capsys.readouterr().err


def test_vitkit_env_names_the_machine_and_the_choices(capsys):
    assert main(["env"]) == 0
    text = capsys.readouterr().out
    assert describe()["cpu"] in text and "precision on cpu:" in text and "versions:" in text
    assert main(["env", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert {"cpu", "isa", "gpus", "versions", "choices"} <= set(info)
