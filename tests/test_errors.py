"""Bad input and faults end to end: image formats, broken files, disk faults."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import copy_catalog_sample, write_tiny_checkpoint
from PIL import Image

from pytest_modelqa.embeddings import ImageLoadError, encode_images, open_rgb
from pytest_modelqa.models import load_model, save_checkpoint

SUITE = """\
catalog: catalog
columns: {category: category, attribute: shoelace_colour}
retrieval: {min_matches: 1, cases: cases.yaml}
"""
CASES = """\
cases:
  - {id: casual-white, text: casual shoes with white shoelace, category: Casual Shoes,
     attribute: white}
"""


def _variants(folder: Path, source: Path) -> dict[str, Path]:
    """Write one photo in every mode a catalog may hold."""
    photo = Image.open(source).convert("RGB")
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    paths["grey"] = folder / "grey.jpg"
    photo.convert("L").save(paths["grey"])
    paths["cmyk"] = folder / "cmyk.jpg"
    photo.convert("CMYK").save(paths["cmyk"])
    paths["rgba"] = folder / "rgba.png"
    photo.convert("RGBA").save(paths["rgba"])
    paths["png"] = folder / "photo.png"
    photo.save(paths["png"])
    paths["16bit"] = folder / "deep.png"
    deep = (np.asarray(photo.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    Image.fromarray(deep).save(paths["16bit"])
    paths["palette"] = folder / "palette.png"
    photo.convert("P").save(paths["palette"])
    return paths


@pytest.fixture
def photo(tmp_path) -> Path:
    root = copy_catalog_sample("footwear", tmp_path / "src", per_split={"test": 1})
    return next((root / "images").iterdir())


def test_every_image_mode_loads_as_rgb(tmp_path, photo):
    for name, path in _variants(tmp_path / "v", photo).items():
        image = open_rgb(path)
        assert image.mode == "RGB", name
        assert image.size == (225, 300), name


def test_broken_images_are_listed_together(tmp_path, photo):
    paths = list(_variants(tmp_path / "v", photo).values())
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(photo.read_bytes()[:2000])
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    model = load_model(str(write_tiny_checkpoint(tmp_path / "m.pt")))
    assert encode_images(model, paths, progress=False).shape == (len(paths), 32)
    with pytest.raises(ImageLoadError) as caught:
        encode_images(
            model, [*paths, truncated, text, tmp_path / "gone.jpg"], progress=False
        )
    message = str(caught.value)
    assert "image(s) could not be read" in message
    assert "gone.jpg: file not found" in message


def test_unreadable_images_all_named(tmp_path, photo):
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(photo.read_bytes()[:2000])
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    model = load_model(str(write_tiny_checkpoint(tmp_path / "m.pt")))
    with pytest.raises(
        ImageLoadError, match=r"2 image\(s\) could not be read"
    ) as caught:
        encode_images(model, [photo, truncated, text], progress=False)
    assert "truncated.jpg" in str(caught.value)
    assert "notes.jpg" in str(caught.value)


def test_gate_names_broken_catalog_images(pytester, tmp_path):
    suite = pytester.path / "suite"
    catalog = copy_catalog_sample(
        "footwear", suite / "catalog", per_split={"train": 5, "test": 30}
    )
    frame = pd.read_csv(catalog / "manifest.csv", dtype=str, keep_default_na=False)
    (catalog / frame.loc[3, "image"]).write_bytes(b"\xff\xd8\xff garbage")
    (catalog / frame.loc[7, "image"]).unlink()
    (suite / "modelqa-suite.yaml").write_text(SUITE)
    (suite / "cases.yaml").write_text(CASES)
    base = write_tiny_checkpoint(pytester.path / "base.pt", seed=0)
    other = write_tiny_checkpoint(pytester.path / "other.pt", seed=1)
    result = pytester.runpytest(
        "-p",
        "no:cacheprovider",
        "-o",
        "modelqa_check_baseline=false",
        str(suite),
        "--model",
        str(other),
        "--modelqa-baseline",
        str(base),
        "-k",
        "zero_shot",
    )
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        [
            "*image(s) could not be read*",
            f"*{frame.loc[7, 'image']}: file not found*",
        ]
    )
    assert "Traceback" not in result.stdout.str()


def test_nan_weights_fail_that_candidate_only(pytester, tmp_path):
    suite = pytester.path / "suite"
    copy_catalog_sample(
        "footwear", suite / "catalog", per_split={"train": 5, "test": 30}
    )
    (suite / "modelqa-suite.yaml").write_text(SUITE)
    (suite / "cases.yaml").write_text(CASES)
    base = write_tiny_checkpoint(pytester.path / "base.pt", seed=0)
    good = write_tiny_checkpoint(pytester.path / "good.pt", seed=1)
    payload = torch.load(base, weights_only=True)
    payload["state_dict"]["visual.proj"][0, 0] = float("nan")
    save_checkpoint(pytester.path / "nan.pt", payload)
    result = pytester.runpytest(
        "-p",
        "no:cacheprovider",
        "-o",
        "modelqa_check_baseline=false",
        str(suite),
        "--model",
        str(pytester.path / "nan.pt"),
        "--model",
        str(good),
        "--modelqa-baseline",
        str(base),
        "-k",
        "zero_shot",
    )
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(
        ["*nan.pt: weight visual.proj contains NaN or infinity*"]
    )


def test_full_disk_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = write_tiny_checkpoint(tmp_path / "epoch.pt", seed=0)
    before = path.read_bytes()
    real_save = torch.save

    def failing_save(obj, handle, *args, **kwargs):
        real_save({"partial": torch.zeros(10)}, handle)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="No space left on device"):
        write_tiny_checkpoint(path, seed=1)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["epoch.pt"]


def test_yaml_path_escape_is_a_collection_error(pytester):
    suite = pytester.path / "suite"
    copy_catalog_sample("footwear", suite / "catalog", per_split={"test": 10})
    (suite / "modelqa-suite.yaml").write_text(SUITE)
    (suite / "cases.yaml").write_text(
        "cases:\n  - {id: x, image: ../../etc/passwd, category: Casual Shoes, "
        "attribute: white}\n"
    )
    shutil.copy2(suite / "cases.yaml", suite / "copy.yaml")
    result = pytester.runpytest("-p", "no:cacheprovider", str(suite))
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(
        ["*cases.yaml:2: image '../../etc/passwd' is outside the suite*"]
    )
    assert "Traceback" not in result.stdout.str()
