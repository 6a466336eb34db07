"""A model that fits the data, for `vitkit train --data SPEC` without --model or --config, and a warning
when a chosen model's input is far from the images' own size.

The rule: the input is the median image size, scaled down so its longer side is at most 224 px (the
paper's resolution), each side rounded to a multiple of the patch size; the patch is 16 px from 128 px
up (ViT-B/16's 14x14 = 196 tokens at 224), below that the size over 8 (about 8x8 = 64 tokens, e.g.
4 px for 32x32 images, where the 8x8-digits model's 4 tokens would throw most pixels away). Widths:
the MNIST model's (D 128, 6 layers) up to 64 px, ViT-Ti/16's above.
"""

from __future__ import annotations

MAX_SIDE = 224
SMALL_MODEL, LARGE_MODEL = "vit_mnist_patch7_28", "vit_tiny_patch16_224"
FAR = 2.0  # input and image sizes further apart than this factor get a warning


def model_for_images(size: tuple[int, int], in_chans: int) -> tuple[dict, str]:
    """(model section for the config, one line saying what was picked and why)."""
    h, w = size
    scale = min(1.0, MAX_SIDE / max(h, w))
    h, w = max(1, round(h * scale)), max(1, round(w * scale))
    side = max(h, w)
    patch = 16 if side >= 128 else max(1, round(side / 8))
    fit = [max(patch, round(v / patch) * patch) for v in (h, w)]
    name = SMALL_MODEL if side <= 64 else LARGE_MODEL
    grid = (fit[0] // patch, fit[1] // patch)
    model = {"name": name, "img_size": fit if fit[0] != fit[1] else fit[0], "patch_size": patch, "in_chans": in_chans}
    why = (f"model: {name}'s widths at {fit[0]}x{fit[1]} px with {patch}-px patches ({grid[0]}x{grid[1]} = "
           f"{grid[0] * grid[1]} tokens), {in_chans} channel{'s' if in_chans > 1 else ''}: the median training "
           f"image is {size[0]}x{size[1]}; pass --model or --config to choose another")
    return model, why


def size_warning(model_size: tuple[int, int], image_size: tuple[int, int] | None) -> str | None:
    """A one-line warning when the model's input differs from the images' size by more than 2x either way."""
    if image_size is None:
        return None
    ratios = [m / i for m, i in zip(model_size, image_size)]
    if all(1 / FAR <= r <= FAR for r in ratios):
        return None
    verb = "shrunk" if min(ratios) < 1 else "enlarged"
    return (f"warning: the model's input is {model_size[0]}x{model_size[1]} px but the median training image is "
            f"{image_size[0]}x{image_size[1]}: every image is {verb} to fit (set model.img_size, or train without "
            f"--model/--config to get a model sized for the data)")


def model_for_data(spec: str, download: bool = False) -> tuple[dict, str]:
    """`model_for_images` for the training images of a data spec (streamed shards: their validation shards'
    images, which `vitkit data pack` split from the same data)."""
    from ..data.datasets import load_source
    from ..data.shards import open_shards
    from ..errors import VitkitError

    if spec.startswith("shards:"):
        _, src = open_shards(spec.partition(":")[2])
        size = (src.val or src.test).typical_size()
    else:
        src = load_source(spec, download)
        size = src.train.typical_size()
    if size is None:
        raise VitkitError(f"{spec}: no training image could be read to size a model; pass --model")
    return model_for_images(size, src.in_chans)
