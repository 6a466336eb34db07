"""`vitkit experiment data-scaling`: every cell trained with the budget rule, table/JSON/plot written,
and a second invocation resumes without redoing finished cells."""

import json

import pytest

from vitkit.cli import main
from vitkit.experiments.data_scaling import epochs_for

RECIPE = ["--set", "model.img_size=16", "--set", "model.depth=2", "--set", "model.embed_dim=32",
          "--set", "model.mlp_dim=64", "--set", "train.batch_size=32", "--set", "data.val_fraction=0.1",
          "--set", "aug.crop_padding=0"]


def test_budget_rule_sees_the_same_number_of_images():
    assert epochs_for(1000, 30_000, 0.0) == 30 and epochs_for(60_000, 30_000, 0.0) == 1
    assert epochs_for(1000, 9_000, 0.1) == 10          # 900 training images after the validation share


@pytest.mark.slow
def test_sweep_writes_results_and_resumes(tmp_path, capsys):
    out = tmp_path / "sweep"
    args = ["experiment", "data-scaling", "--data", "synthetic", "--sizes", "40,80",
            "--models", "vit_digits_patch4_8,resnet_bit_mnist", "--images-seen", "160", "--config", "digits",
            "--out", str(out), "--no-progress"] + RECIPE
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "| vit_digits_patch4_8 |" in printed and "| resnet_bit_mnist |" in printed
    result = json.loads((out / "data_scaling.json").read_text())
    assert len(result["cells"]) == 4 and {c["epochs"] for c in result["cells"]} == {5, 3}  # 36 and 72 train images
    for c in result["cells"]:
        assert 0 <= c["test_acc"] <= 1
    assert (out / "data_scaling.png").stat().st_size > 5000 and (out / "data_scaling.md").is_file()

    done = out / "cells" / "resnet_bit_mnist-n80-s0"
    stamps = {p.name: (p / "summary.json").stat().st_mtime_ns for p in (out / "cells").iterdir()}
    (done / "summary.json").unlink()           # as if this cell had been interrupted after its last checkpoint
    assert main(args) == 0
    log = capsys.readouterr().out
    assert log.count("finished earlier, reused") == 3 and "resumed" in log
    for name, stamp in stamps.items():
        if name != done.name:
            assert (out / "cells" / name / "summary.json").stat().st_mtime_ns == stamp  # not retrained

    assert main(args[:-len(RECIPE)] + RECIPE[:-2] + ["--images-seen", "800"]) == 2     # another budget, same folder
    assert "use another --out" in capsys.readouterr().err
