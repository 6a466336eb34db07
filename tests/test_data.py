"""Data sources, decoding rules, splits, augmentation."""

import gzip
import io
import pickle
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import make_image_folder, make_mnist_dir
from vitkit import VitkitError
from vitkit.config import AugConfig, DataConfig
from vitkit.data import sources
from vitkit.data.datasets import EpochBatches, build_data, collate, load_source, stratified_split
from vitkit.rng import SPLIT_VAL
from vitkit.data.images import load_image, read_image
from vitkit.data.transforms import (Preprocess, mix_batch, one_hot, rand_augment, random_crop_with_padding,
                                    random_resized_crop)


def test_digits_is_real_offline_data():
    src = load_source("digits")
    assert len(src.train) + len(src.test) == 1797 and src.in_chans == 1
    assert src.train.images.dtype == torch.uint8 and src.train.images.shape[1:] == (1, 8, 8)
    assert int(src.train.images.max()) == 255


@pytest.mark.parametrize("gz", [True, False])
def test_idx_reader_reads_raw_and_gzip(tmp_path, gz):
    make_mnist_dir(tmp_path, 30, 10, gz=gz)
    src = load_source(f"mnist:{tmp_path}")
    assert src.train.images.shape == (30, 1, 28, 28) and src.test.labels.tolist()[:3] == [0, 1, 2]


def test_idx_errors_name_the_file(tmp_path):
    make_mnist_dir(tmp_path, 30, 10, gz=False)
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03" + struct_dims(10, 28, 28) + b"\x00" * 50)
    with pytest.raises(VitkitError, match="t10k-images-idx3-ubyte is truncated"):
        load_source(f"mnist:{tmp_path}")
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(VitkitError, match="not an IDX file"):
        load_source(f"mnist:{tmp_path}")
    (tmp_path / "t10k-images-idx3-ubyte").unlink()
    with pytest.raises(VitkitError, match="missing t10k-images-idx3-ubyte"):
        load_source(f"mnist:{tmp_path}")


def struct_dims(*dims):
    import struct
    return struct.pack(f">{len(dims)}I", *dims)


def test_real_mnist_files_load(mnist_dir):
    src = load_source(f"mnist:{mnist_dir}")
    assert len(src.train) == 60000 and len(src.test) == 10000
    assert src.train.labels.bincount().tolist()[0] == 5923  # the well-known count of zeros


@pytest.mark.parametrize("spec,msg", [
    ("mnist:/nonexistent/dir", "does not exist"),
    ("folder:EMPTY", "is empty"),
    ("imagenet:/x", "unknown data spec"),
    ("mnist", "needs a directory"),
])
def test_bad_specs_are_clear(tmp_path, spec, msg):
    (tmp_path / "empty").mkdir()
    with pytest.raises(VitkitError, match=msg):
        load_source(spec.replace("EMPTY", str(tmp_path / "empty")))


def test_class_folder_without_images_is_named(tmp_path):
    make_image_folder(tmp_path)
    (tmp_path / "zebra").mkdir()
    (tmp_path / "zebra" / "notes.txt").write_text("no images")
    with pytest.raises(VitkitError, match="zebra holds no images"):
        load_source(f"folder:{tmp_path}")


def test_folder_without_split_gets_stratified_holdouts(tmp_path):
    make_image_folder(tmp_path, per_class=20)
    b = build_data(DataConfig(spec=f"folder:{tmp_path}"), AugConfig(), (16, 16), None)
    assert b.classes == ["cat", "dog", "eel"] and b.pre.in_chans == 3
    for ds, expected in ((b.test, 4), (b.val, 2)):
        assert ds.split.labels.bincount().tolist() == [expected] * 3  # every class held out equally
    all_paths = b.train.split.paths + b.val.split.paths + b.test.split.paths
    assert len(set(all_paths)) == 60  # disjoint and complete
    again = build_data(DataConfig(spec=f"folder:{tmp_path}"), AugConfig(), (16, 16), None)
    assert again.test.split.paths == b.test.split.paths  # seeded


def test_folder_with_explicit_splits(tmp_path):
    for split in ("train", "val", "test"):
        make_image_folder(tmp_path / split, per_class=3)
    b = build_data(DataConfig(spec=f"folder:{tmp_path}"), AugConfig(), (16, 16), None)
    assert len(b.train) == 9 and len(b.val) == 9 and len(b.test) == 9


def test_grayscale_folder_gives_one_channel(tmp_path):
    make_image_folder(tmp_path, mode="L")
    assert load_source(f"folder:{tmp_path}").in_chans == 1


@pytest.mark.parametrize("mode", ["RGBA", "P", "LA", "CMYK", "I;16", "1", "I", "F"])
def test_image_modes_convert_predictably(tmp_path, mode):
    arr = np.full((6, 5, 3), 200, dtype=np.uint8)
    img = Image.fromarray(arr, "RGB")
    if mode == "I;16":
        img = Image.fromarray(np.full((6, 5), 65535 // 2, dtype=np.uint16))
    elif mode in ("I", "F"):
        img = Image.fromarray(np.full((6, 5), 1000, dtype=np.int32 if mode == "I" else np.float32))
    else:
        img = img.convert(mode)
    path = tmp_path / ("x.tif" if mode in ("I;16", "I", "F", "CMYK") else "x.png")
    img.save(path)
    rgb, gray = read_image(path, 3), read_image(path, 1)
    assert rgb.shape == (3, 6, 5) and gray.shape == (1, 6, 5) and rgb.dtype == torch.uint8
    if mode == "I;16":
        assert abs(int(gray[0, 0, 0]) - 128) <= 1  # 16-bit scaled to 8 bits


def test_transparency_composited_on_black(tmp_path):
    arr = np.zeros((4, 4, 4), dtype=np.uint8)
    arr[..., 0] = 255
    arr[:2, :, 3] = 255  # top half opaque red, bottom half transparent
    Image.fromarray(arr, "RGBA").save(tmp_path / "a.png")
    t = read_image(tmp_path / "a.png", 3)
    assert t[0, 0, 0] == 255 and t[0, 3, 0] == 0


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("L", (8, 4), 0)
    img.paste(255, (0, 0, 2, 4))  # white stripe on the left of a wide image
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    img.save(tmp_path / "r.jpg", exif=exif, quality=100)
    t = read_image(tmp_path / "r.jpg", 1)
    assert t.shape == (1, 8, 4)  # tall after orientation
    assert t[0, 0:2, :].float().mean() > 200  # the stripe is now at the top


def test_animated_gif_gives_first_frame(tmp_path):
    frames = [Image.new("L", (4, 4), v) for v in (255, 0)]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:])
    assert read_image(tmp_path / "a.gif", 1).float().mean() > 200


def test_corrupt_files_are_named(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (tmp_path / "empty.jpg").write_bytes(b"")
    for name in ("bad.png", "empty.jpg"):
        with pytest.raises(VitkitError, match=name):
            load_image(tmp_path / name)


def test_decompression_bomb_refused(tmp_path, monkeypatch):
    from vitkit.data import images
    Image.new("L", (300, 300)).save(tmp_path / "big.png")
    monkeypatch.setattr(images, "MAX_PIXELS", 10_000)
    with pytest.raises(VitkitError, match="exceeds the limit"):
        load_image(tmp_path / "big.png")


def test_corrupt_images_skipped_with_names_or_strict_error(tmp_path):
    make_image_folder(tmp_path, per_class=10)
    (tmp_path / "cat" / "zz_broken.png").write_bytes(b"\x89PNG\r\n\x1a\ntruncated")
    cfg = DataConfig(spec=f"folder:{tmp_path}", test_fraction=0.0001, val_fraction=0.0001)
    b = build_data(cfg, AugConfig(), (16, 16), None)
    ds = b.train
    idx = ds.split.paths.index(str(tmp_path / "cat" / "zz_broken.png"))
    batch = collate([ds[idx], ds[0]])
    assert batch["skipped"] == [str(tmp_path / "cat" / "zz_broken.png")] and len(batch["x"]) == 1
    ds.strict = True
    with pytest.raises(VitkitError, match="zz_broken.png"):
        ds[idx]


def _cifar_batch(n, classes, label_key):
    rng = np.random.default_rng(0)
    return {b"data": rng.integers(0, 255, (n, 3072), dtype=np.uint8), label_key: [i % classes for i in range(n)]}


def test_cifar10_batches(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    for i in range(1, 6):
        (root / f"data_batch_{i}").write_bytes(pickle.dumps(_cifar_batch(4, 10, b"labels")))
    (root / "test_batch").write_bytes(pickle.dumps(_cifar_batch(6, 10, b"labels")))
    (root / "batches.meta").write_bytes(pickle.dumps({b"label_names": [f"c{i}".encode() for i in range(10)]}))
    src = load_source(f"cifar10:{tmp_path}")
    assert len(src.train) == 20 and len(src.test) == 6 and src.classes[3] == "c3"
    assert src.train.images.shape == (20, 3, 32, 32)


def test_cifar_loader_refuses_code_in_pickles(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    root = tmp_path / "cifar-100-python"
    root.mkdir()
    (root / "meta").write_bytes(pickle.dumps({b"fine_label_names": [b"a"], b"x": Evil()}))
    with pytest.raises(VitkitError, match="refusing to load"):
        load_source(f"cifar100:{tmp_path}")
    assert not marker.exists()


def test_synthetic_source_is_learnable_shape():
    src = load_source("synthetic")
    assert src.train.images.shape == (2000, 1, 16, 16) and len(src.classes) == 4


def test_download_verification_on_local_files(tmp_path):
    payload = b"\x00\x00\x08\x01" + struct_dims(3) + b"\x01\x02\x03"
    good = tmp_path / "labels.part"
    with gzip.open(good, "wb") as f:
        f.write(payload)
    import hashlib
    digest = hashlib.sha256(payload).hexdigest()
    sources.verify(good, tmp_path / "labels.gz", digest, decompress=True)  # passes
    bad = tmp_path / "other.part"
    bad.write_bytes(b"tampered")
    with pytest.raises(VitkitError, match="checksum mismatch"):
        sources.verify(bad, tmp_path / "other.gz", digest)
    # fetch: a file:// "download" whose bytes do not match never takes the destination's place
    dest = tmp_path / "data" / "labels.gz"
    with pytest.raises(VitkitError, match="checksum mismatch"):
        sources.fetch(bad.as_uri(), dest, digest, decompress=True)
    assert not dest.exists() and not list(dest.parent.glob(".*.tmp"))
    assert sources.fetch(good.as_uri(), dest, digest, decompress=True) == dest and dest.read_bytes() == good.read_bytes()


def test_shipped_mnist_matches_recorded_checksums(mnist_dir):
    for name, digest in sources.MNIST_FILES.items():
        assert sources.checksum(mnist_dir / name, "sha256", decompress=True) == digest


def test_tar_extraction_refuses_escaping_members(tmp_path):
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("../escape.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    with pytest.raises(VitkitError, match="unsafe member"):
        sources.extract_tar(archive, tmp_path / "out")
    assert not (tmp_path / "escape.txt").exists()


def test_stratified_split_keeps_class_proportions():
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    keep, held = stratified_split(labels, 0.1, 0, SPLIT_VAL)
    assert labels[held].bincount().tolist() == [5, 3, 2]
    assert len(set(keep.tolist()) & set(held.tolist())) == 0 and len(keep) + len(held) == 100


def test_epoch_batches_reshuffle_and_skip():
    s = EpochBatches(10, 3, seed=0)
    first = list(s)
    s.epoch = 1
    second = list(s)
    assert sorted(sum(first, [])) == list(range(10)) and first != second
    s.skip = 2
    assert list(s) == second[2:] and len(s) == 2


def test_augmentations_keep_shape_and_are_seeded():
    x = torch.rand(1, 8, 8)
    g = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    assert random_crop_with_padding(x, 2, g()).shape == x.shape
    assert random_resized_crop(x, (12, 10), g()).shape == (1, 12, 10)
    a, b = rand_augment(x, 2, 9, g()), rand_augment(x, 2, 9, g())
    assert torch.equal(a, b) and a.shape == x.shape and 0 <= a.min() and a.max() <= 1
    shifted = random_crop_with_padding(torch.ones(1, 4, 4), 2, torch.Generator().manual_seed(1))
    assert shifted.sum() < 16  # zero padding moved in


def test_mixup_and_cutmix_targets():
    x = torch.rand(8, 1, 16, 16)
    y = torch.arange(8) % 4
    for mixup, cutmix in ((0.8, 0.0), (0.0, 1.0)):
        xm, t = mix_batch(x, y, 4, mixup, cutmix, torch.Generator().manual_seed(0))
        assert xm.shape == x.shape and torch.allclose(t.sum(1), torch.ones(8))
        assert (t.max(1).values < 1).any()
    _, t = mix_batch(x, y, 4, 0, 0, torch.Generator(), smoothing=0.1)
    assert torch.allclose(t, one_hot(y, 4, 0.1)) and abs(t[0].max().item() - 0.925) < 1e-6


def test_eval_preprocessing_resizes_and_normalises():
    pre = Preprocess((8, 8), 1, (0.5,), (0.5,))
    out = pre.eval(torch.full((1, 20, 30), 255, dtype=torch.uint8))
    assert out.shape == (1, 8, 8) and torch.allclose(out, torch.ones(1, 8, 8))
