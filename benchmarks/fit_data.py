"""What `vitkit train --data folder:DIR` gets from a model sized for the images, against the 8x8-digits
model that such a command trained before (every image shrunk to 8x8).

    pip install scikit-image   # its wheel ships the three real texture photos used here
    python benchmarks/fit_data.py --out /tmp/fit_data

The data: random 32x32 crops of scikit-image's brick, grass and gravel photos (512x512 grayscale, saved
as RGB PNGs), 400 per class (split by vitkit: a 20% test hold-out, 10% of the rest for validation).
Both runs use the same digits recipe (the default preset); only the model differs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image


def make_textures(root: Path, per_class: int, size: int, seed: int = 0) -> Path:
    import skimage.data

    rng = np.random.default_rng(seed)
    for name in ("brick", "grass", "gravel"):
        photo = getattr(skimage.data, name)()
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            y, x = rng.integers(0, photo.shape[0] - size), rng.integers(0, photo.shape[1] - size)
            Image.fromarray(photo[y:y + size, x:x + size]).convert("RGB").save(root / name / f"{i:04d}.png")
    return root


def run(args: list[str], out: Path) -> dict:
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "vitkit", "train", *args, "--out", str(out), "--no-progress",
                           "--set", "train.tensorboard=false"], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(done.stderr[-2000:])
    summary = json.loads((out / "summary.json").read_text())
    first = [line for line in done.stdout.splitlines() if line.startswith(("model:", "warning:"))]
    return {"args": args, "test_acc": summary["test_acc"], "wall_s": round(time.perf_counter() - t0, 1),
            "model": summary["model"], "params": summary["params"], "said": first}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="folder for the data, the runs and fit_data.json")
    ap.add_argument("--per-class", type=int, default=400, help="crops per texture (default 400)")
    a = ap.parse_args()
    out = Path(a.out)
    data = make_textures(out / "textures", a.per_class, 32)
    spec = f"folder:{data}"
    rows = [run(["--data", spec], out / "fitted"), run(["--data", spec, "--model", "vit_digits_patch4_8"], out / "digits")]
    from common import cpu_description
    from vitkit.machine import describe
    result = {"date": time.strftime("%Y-%m-%d"), "cpu": cpu_description(), "machine": describe(), "rows": rows}
    (out / "fit_data.json").write_text(json.dumps(result, indent=2))
    for r in rows:
        print(f"{r['model']} ({r['params']:,} params): test {100 * r['test_acc']:.2f}% in {r['wall_s']} s; "
              f"{' | '.join(r['said'])}")


if __name__ == "__main__":
    main()
