"""Probe sets resolve in the reference's order, from small real files in the published layouts."""
from __future__ import annotations

import io
import pickle
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cdissect_cli.probeset_download import download_probe_set
from cdissect_cli.probesets import ProbeSetDownloadError, ProbeSetError, ProbeSetNotFoundError, resolve_probe_set

BRODEN_SOURCES = ("pascal", "ade20k", "opensurfaces", "dtd")      # created out of order on purpose


def _image_bytes(fmt: str, colour: tuple[int, int, int] = (200, 10, 10)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buf, format=fmt)
    return buf.getvalue()


def make_broden(root: Path) -> list[str]:
    """A tiny Broden1_224 tree (index.csv, photos + segmentation PNGs); returns the expected order."""
    base = root / "broden1_224"
    (base / "images").mkdir(parents=True)
    (base / "index.csv").write_text("image,split,ih,iw,sh,sw\n")
    (base / "c_scene.csv").write_text("code,number,name\n")
    (base / "readme.txt").write_text("broden")
    expected = []
    for source in BRODEN_SOURCES:
        folder = base / "images" / source
        folder.mkdir()
        for stem in ("b_img_0002", "a_img_0010", "a_img_0001"):
            (folder / f"{stem}.jpg").write_bytes(_image_bytes("JPEG"))
            (folder / f"{stem}_object.png").write_bytes(_image_bytes("PNG"))
    for source in sorted(BRODEN_SOURCES):
        expected += [f"{source}/{stem}.jpg" for stem in ("a_img_0001", "a_img_0010", "b_img_0002")]
    return expected


def test_broden_is_imagefolder_order_of_jpegs_only(tmp_path: Path) -> None:
    expected = make_broden(tmp_path)
    ps = resolve_probe_set("broden", root=tmp_path)
    images = list(ps.images)
    assert [im.name for im in images] == expected
    assert len(ps) == 12
    assert images[0].labels == {"source": "ade20k"}
    assert images[0].read_bytes()[:2] == b"\xff\xd8"                     # JPEG magic
    assert list(ps.images) == images                                     # re-iterable, same order


def test_imagenet_broden_puts_imagenet_first(tmp_path: Path) -> None:
    make_broden(tmp_path)
    for wnid in ("n01443537", "n01440764"):
        (tmp_path / "imagenet_val" / wnid).mkdir(parents=True)
        for f in ("ILSVRC2012_val_00000002.JPEG", "ILSVRC2012_val_00000001.JPEG"):
            (tmp_path / "imagenet_val" / wnid / f).write_bytes(_image_bytes("JPEG"))
    names = [im.name for im in resolve_probe_set("imagenet_broden", root=tmp_path)]
    assert names[:4] == ["imagenet_val/n01440764/ILSVRC2012_val_00000001.JPEG",
                         "imagenet_val/n01440764/ILSVRC2012_val_00000002.JPEG",
                         "imagenet_val/n01443537/ILSVRC2012_val_00000001.JPEG",
                         "imagenet_val/n01443537/ILSVRC2012_val_00000002.JPEG"]
    assert names[4] == "broden/ade20k/a_img_0001.jpg" and len(names) == 16
    first = next(iter(resolve_probe_set("imagenet_val", root=tmp_path)))
    assert first.labels == {"class": "n01440764", "class_index": "0"}


def make_cifar(root: Path, n: int = 5) -> np.ndarray:
    """CIFAR-100 python batches (train, test, meta) with n random images; returns the pixels."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
    batch = {b"filenames": [f"img_{i}.png".encode() for i in range(n)], b"fine_labels": [i % 3 for i in range(n)],
             b"coarse_labels": [0] * n, b"data": pixels.reshape(n, -1)}
    for split in ("train", "test"):
        with open(folder / split, "wb") as fh:
            pickle.dump(batch, fh, protocol=2)
    with open(folder / "meta", "wb") as fh:
        pickle.dump({b"fine_label_names": [b"apple", b"bear", b"cloud"], b"coarse_label_names": [b"fruit"]},
                    fh, protocol=2)
    return pixels


def test_cifar100_pickles_become_png_images_in_file_order(tmp_path: Path) -> None:
    pixels = make_cifar(tmp_path)
    ps = resolve_probe_set("cifar100_val", root=tmp_path)
    images = list(ps.images)
    assert len(ps) == 5 and [im.labels["class"] for im in images] == ["apple", "bear", "cloud", "apple", "bear"]
    decoded = np.asarray(Image.open(io.BytesIO(images[3].read_bytes())))
    assert decoded.shape == (32, 32, 3)
    assert np.array_equal(decoded, pixels[3].transpose(1, 2, 0))
    assert images[3].path is None and images[0].name == "00000_img_0.png"
    assert images[3].path_or_bytes == images[3].read_bytes()


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_cifar_loader_refuses_code_in_pickles(tmp_path: Path) -> None:
    make_cifar(tmp_path)
    with open(tmp_path / "cifar-100-python" / "train", "wb") as fh:
        pickle.dump({"data": _Evil()}, fh)
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        resolve_probe_set("cifar100_train", root=tmp_path)


def test_plain_folder_sorted_with_attribute_labels(tmp_path: Path) -> None:
    folder = tmp_path / "shapes"
    folder.mkdir()
    for name in ("shape_000002.png", "shape_000000.png", "shape_000001.png"):
        (folder / name).write_bytes(_image_bytes("PNG"))
    (folder / "notes.md").write_text("not an image")
    (folder / "attributes.csv").write_text("name,shape,colour\nshape_000000.png,circle,red\n"
                                           "shape_000001.png,square,blue\nshape_000002.png,star,green\n")
    images = list(resolve_probe_set(str(folder)).images)
    assert [im.name for im in images] == ["shape_000000.png", "shape_000001.png", "shape_000002.png"]
    assert images[1].labels == {"shape": "square", "colour": "blue"}


def test_class_folder_uses_imagefolder_order(probe_folder: Path) -> None:
    images = list(resolve_probe_set(probe_folder).images)
    assert [im.labels["class"] for im in images] == ["blue"] * 8 + ["green"] * 8 + ["red"] * 8
    blue = [im.name for im in images[:8]]
    assert blue == sorted(blue)


def test_labels_csv_without_name_column_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(_image_bytes("PNG"))
    (tmp_path / "labels.csv").write_text("file,class\na.png,x\n")
    with pytest.raises(ProbeSetError, match="'name' column"):
        resolve_probe_set(tmp_path)


def test_places365_val_follows_its_listing(tmp_path: Path) -> None:
    base = tmp_path / "places365"
    (base / "val_256").mkdir(parents=True)
    for f in ("Places365_val_00000001.jpg", "Places365_val_00000002.jpg"):
        (base / "val_256" / f).write_bytes(_image_bytes("JPEG"))
    (base / "places365_val.txt").write_text("Places365_val_00000002.jpg 8\nPlaces365_val_00000001.jpg 0\n")
    images = list(resolve_probe_set("places365_val", root=tmp_path).images)
    assert [im.labels["class"] for im in images] == ["apartment building/outdoor", "airfield"]
    assert images[0].path == base / "val_256" / "Places365_val_00000002.jpg"


def test_unknown_and_missing_sets_explain_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ProbeSetNotFoundError, match="broden.*imagenet_val.*folder"):
        resolve_probe_set("no_such_set", root=tmp_path)
    with pytest.raises(ProbeSetNotFoundError, match="download_probe_set"):
        resolve_probe_set("broden", root=tmp_path)
    with pytest.raises(ProbeSetNotFoundError, match="imagenet_val"):
        resolve_probe_set("imagenet_val", root=tmp_path)
    with pytest.raises(ProbeSetError, match="only broden and cifar100"):
        download_probe_set("imagenet_val", root=tmp_path)


def test_root_defaults_to_data_dir_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_broden(tmp_path)
    monkeypatch.setenv("CDISSECT_DATA_DIR", str(tmp_path))
    assert len(resolve_probe_set("broden")) == 12


def test_download_offline_fails_fast_with_instructions(tmp_path: Path) -> None:
    url = "http://127.0.0.1:9/broden1_224.zip"                         # discard port: refused at once
    start = time.monotonic()
    with pytest.raises(ProbeSetDownloadError) as err:
        download_probe_set("broden", root=tmp_path, url=url)
    assert time.monotonic() - start < 10
    msg = str(err.value)
    assert "'broden'" in msg and url in msg and str(tmp_path) in msg and "broden1_224/images" in msg
    assert not list(tmp_path.glob("*.part"))


def test_download_broden_unpacks_and_drops_segmentations(tmp_path: Path) -> None:
    src = tmp_path / "src"
    expected = make_broden(src)
    archive = tmp_path / "broden1_224.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in sorted((src / "broden1_224").rglob("*")):
            zf.write(f, f.relative_to(src).as_posix())
    root = tmp_path / "data"
    download_probe_set("broden", root=root, url=archive.as_uri())
    assert not list((root / "broden1_224" / "images").rglob("*.png"))
    assert not list((root / "broden1_224").glob("*.txt"))
    assert (root / "broden1_224" / "c_scene.csv").is_file()
    assert [im.name for im in resolve_probe_set("broden", root=root)] == expected


def test_download_cifar100_from_archive(tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_cifar(src)
    archive = tmp_path / "cifar-100-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(src / "cifar-100-python", arcname="cifar-100-python")
    root = tmp_path / "data"
    download_probe_set("cifar100", root=root, url=archive.as_uri())
    assert len(resolve_probe_set("cifar100_train", root=root)) == 5


def test_probesets_module_does_not_import_torch() -> None:
    import subprocess
    code = "import sys, cdissect_cli.probesets, cdissect_cli.concepts; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
