"""Bad input and faults end to end: checkpoints, images, catalogs, YAML, exit codes.

docs/errors.md lists each case with the message a user sees and the test here (or
in another test file) that pins it.
"""

from __future__ import annotations

import errno
import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import safetensors.torch
import torch
import yaml
from conftest import TINY_MODEL_CFG, copy_catalog_sample, write_tiny_checkpoint
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from pytest_modelqa.embeddings import (
    EmbeddingError,
    ImageLoadError,
    encode_images,
    encode_texts,
    open_rgb,
)
from pytest_modelqa.models import load_model, save_checkpoint
from pytest_modelqa.suite import load_suite
from pytest_modelqa.yamlsource import SuiteError

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


def write_suite(root: Path, *, test_items: int = 30) -> Path:
    """Write a one-case suite over a small sample of the footwear catalog."""
    suite = root / "suite"
    copy_catalog_sample(
        "footwear", suite / "catalog", per_split={"train": 5, "test": test_items}
    )
    (suite / "modelqa-suite.yaml").write_text(SUITE)
    (suite / "cases.yaml").write_text(CASES)
    return suite


def run_gate(pytester, *args, **kwargs):
    # The tiny random models are at chance level, so the baseline check is off.
    return pytester.runpytest(
        "-p", "no:cacheprovider", "-o", "modelqa_check_baseline=false", *args, **kwargs
    )


class CreateFileOnUnpickle:
    """An object whose unpickling opens (creates) a file: a stand-in for any code."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


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
    truncated = catalog / frame.loc[5, "image"]
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
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
    # Every broken image is named in one message, in catalog order.
    result.stdout.fnmatch_lines(
        [
            "*3 image(s) could not be read:",
            f"*{frame.loc[3, 'image']}: not an image format Pillow can decode",
            f"*{frame.loc[5, 'image']}: OSError: image file is truncated*",
            f"*{frame.loc[7, 'image']}: file not found",
            "Replace these files, or remove their rows from the catalog manifest",
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


def test_marker_payload_creates_file(tmp_path):
    # A plain unpickler runs the payload, so its marker's absence below proves that
    # loading never ran it.
    marker = tmp_path / "marker"
    pickle.loads(pickle.dumps(CreateFileOnUnpickle(marker))).close()
    assert marker.exists()


def _bad_candidates(folder: Path, base: Path, marker: Path) -> dict[str, Path]:
    """Write one candidate file per fault a gate may be handed."""
    good = write_tiny_checkpoint(folder / "good.pt", seed=1)
    files = {"empty": folder / "empty.pt", "notes": folder / "notes.pt"}
    files["empty"].write_bytes(b"")
    files["notes"].write_text("epoch 3 looked best\n")
    files["truncated"] = folder / "truncated.pt"
    files["truncated"].write_bytes(good.read_bytes()[:5000])
    payload = torch.load(base, weights_only=True)
    payload["state_dict"]["visual.proj"][0, 0] = float("inf")
    files["inf"] = save_checkpoint(folder / "inf.pt", payload)
    payload = torch.load(base, weights_only=True)
    payload["state_dict"]["visual.conv1.weight"] *= 1e38
    files["overflow"] = save_checkpoint(folder / "overflow.pt", payload)
    files["pickle"] = folder / "pickle.pt"
    torch.save({"state_dict": CreateFileOnUnpickle(marker)}, files["pickle"])
    files["other-arch"] = folder / "other-arch.safetensors"
    state_dict = torch.load(base, weights_only=True)["state_dict"]
    safetensors.torch.save_file(state_dict, files["other-arch"])
    files["good"] = good
    return files


def test_bad_candidates_fail_alone(pytester, tmp_path):
    suite = write_suite(pytester.path)
    base = write_tiny_checkpoint(pytester.path / "base.pt", seed=0)
    marker = tmp_path / "marker"
    files = _bad_candidates(pytester.path, base, marker)
    wider = json.loads(json.dumps(TINY_MODEL_CFG))
    wider["vision_cfg"]["width"] = 48
    (pytester.path / "wider.json").write_text(json.dumps(wider))
    models = [arg for path in files.values() for arg in ("--model", str(path))]
    result = run_gate(
        pytester,
        str(suite),
        *models,
        "--modelqa-baseline",
        str(base),
        "--modelqa-arch",
        str(pytester.path / "wider.json"),
        "-k",
        "zero_shot",
    )
    result.assert_outcomes(failed=len(files) - 1, passed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        [
            "model could not be loaded: checkpoint is empty (0 bytes): *empty.pt",
            "model could not be loaded: *notes.pt: not a checkpoint: expected a torch "
            "checkpoint (zip or pickle) or a safetensors file, but the file starts "
            "with b'epoch 3 '",
            "model could not be loaded: *truncated.pt: checkpoint is truncated or "
            "damaged: its zip archive is unreadable (File is not a zip file)",
            "model could not be loaded: *inf.pt: weight visual.proj contains NaN or "
            "infinity (1 of 1024 values)",
            "*overflow.pt: the model returned NaN, infinite or all-zero embeddings for "
            "35 of 35 inputs in a batch, although its weights are finite*",
            "model could not be loaded: *pickle.pt: rejected, because it contains "
            "Python objects other than tensors and plain containers, and unpickling "
            "them could run code (torch.load reported 'Unsupported global: GLOBAL "
            "io.open')*",
            "model could not be loaded: *other-arch.safetensors: the weights do not "
            "fit the model config in *wider.json: 20 of another shape (visual.class_"
            "embedding is (32,) in the file but (48,) in the model*",
            "good: ACCEPTABLE (winner), 1/1 checks passed*",
        ]
    )
    assert "Traceback" not in result.stdout.str()
    assert not marker.exists()


def test_overflowing_model_raises_embedding_error(tmp_path):
    path = write_tiny_checkpoint(tmp_path / "m.pt")
    payload = torch.load(path, weights_only=True)
    payload["state_dict"]["text_projection"].fill_(3e38)
    save_checkpoint(path, payload)
    model = load_model(str(path))
    with pytest.raises(EmbeddingError, match=r"m\.pt: the model returned NaN"):
        encode_texts(model, ["white shoelace"])


def test_large_finite_features_still_normalise(tmp_path):
    # A float32 norm of these features would overflow to inf and give zero rows.
    path = write_tiny_checkpoint(tmp_path / "m.pt")
    payload = torch.load(path, weights_only=True)
    payload["state_dict"]["text_projection"] *= 1e25
    save_checkpoint(path, payload)
    embeddings = encode_texts(load_model(str(path)), ["white shoelace", "black"])
    assert np.allclose(np.linalg.norm(embeddings, axis=1), 1.0)


NON_INFERIOR = """\
catalog: catalog
columns: {category: category, attribute: shoelace_colour}
classification:
  checks: {zero_shot_accuracy: {rule: non_inferior, tolerance: 0.05}}
retrieval: {min_matches: 1, cases: cases.yaml, checks: {}}
"""


def test_every_image_mode_passes_the_gate(pytester, photo):
    suite = write_suite(pytester.path, test_items=12)
    (suite / "modelqa-suite.yaml").write_text(NON_INFERIOR)
    manifest = suite / "catalog" / "manifest.csv"
    frame = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    variants = _variants(suite / "catalog" / "modes", photo)
    test_rows = frame.index[frame["split"] == "test"]
    for row, path in zip(test_rows, variants.values(), strict=False):
        frame.loc[row, "image"] = path.relative_to(suite / "catalog").as_posix()
    frame.to_csv(manifest, index=False)
    modes = {}
    for name, path in variants.items():
        with Image.open(path) as image:
            modes[name] = image.mode
    assert modes == {
        "grey": "L",
        "cmyk": "CMYK",
        "rgba": "RGBA",
        "png": "RGB",
        "16bit": "I;16",
        "palette": "P",
    }
    base = write_tiny_checkpoint(pytester.path / "base.pt", seed=0)
    same = pytester.path / "same.pt"
    shutil.copy2(base, same)
    result = run_gate(
        pytester, str(suite), "--model", str(same), "--modelqa-baseline", str(base)
    )
    result.assert_outcomes(passed=2)
    assert result.ret == pytest.ExitCode.OK


def _broken_suites(root: Path) -> dict[str, str]:
    """Write one broken suite per folder; return the message each must give."""
    messages = {}

    def suite(name: str, yaml_text: str = SUITE, cases: str = CASES) -> Path:
        folder = root / name
        copy_catalog_sample(
            "footwear", folder / "catalog", per_split={"train": 5, "test": 10}
        )
        (folder / "modelqa-suite.yaml").write_text(yaml_text)
        (folder / "cases.yaml").write_text(cases)
        return folder

    folder = suite(
        "empty-split",
        SUITE.replace("retrieval:", "classification: {split: val}\nretrieval:"),
    )
    messages["empty-split"] = (
        f"{folder}/modelqa-suite.yaml:3: classification.split: catalog 'catalog' has "
        "no items in split 'val'; use a split that has items, or all"
    )
    folder = suite(
        "unknown-value", cases=CASES.replace("attribute: white", "attribute: whit")
    )
    messages["unknown-value"] = (
        f"{folder}/cases.yaml:3: case 'casual-white'.attribute: unknown "
        "shoelace_colour value 'whit'; did you mean 'white'?*"
    )
    folder = suite(
        "syntax", cases=CASES.replace("category: Casual", "category: [Casual")
    )
    messages["syntax"] = (
        f"{folder}/cases.yaml:3: YAML syntax error: expected ',' or ']', but got '}}'; "
        "check the indentation, brackets and quotes at this line"
    )
    folder = suite("duplicate-id")
    manifest = folder / "catalog" / "manifest.csv"
    lines = manifest.read_text().splitlines(keepends=True)
    manifest.write_text("".join([*lines, lines[1]]))
    messages["duplicate-id"] = (
        f"{folder}/modelqa-suite.yaml:1: {manifest}:{len(lines) + 1}: duplicate id "
        f"'{lines[1].split(',')[0]}' (1 in all); give each item a unique id"
    )
    folder = suite("comma")
    manifest = folder / "catalog" / "manifest.csv"
    lines = manifest.read_text().splitlines(keepends=True)
    lines[2] = lines[2].replace("Shoes,", "Shoes, Black,", 1)
    manifest.write_text("".join(lines))
    messages["comma"] = (
        f"{folder}/modelqa-suite.yaml:1: {manifest}:3: row has 11 fields, more than "
        "the header's 10; quote fields that contain commas, such as product names"
    )
    folder = suite("utf-8")
    manifest = folder / "catalog" / "manifest.csv"
    manifest.write_bytes(manifest.read_bytes().replace(b"Shoes", b"Sho\xe9s", 1))
    messages["utf-8"] = (
        f"{folder}/modelqa-suite.yaml:1: {manifest}:2: not valid UTF-8 at byte *; "
        "re-save it as UTF-8"
    )
    return messages


def test_broken_suites_are_collection_errors(pytester):
    messages = _broken_suites(pytester.path)
    result = run_gate(pytester, str(pytester.path))
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(
        [f"*{len(messages)} errors during collection*"], consecutive=False
    )
    for message in messages.values():
        result.stdout.fnmatch_lines([message])
    assert "Traceback" not in result.stdout.str()


def test_empty_class_warns(pytester):
    suite = write_suite(pytester.path)
    manifest = suite / "catalog" / "manifest.csv"
    frame = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    frame.loc[frame["split"] == "train", "shoelace_colour"] = "violet"
    frame.to_csv(manifest, index=False)
    base = write_tiny_checkpoint(pytester.path / "base.pt", seed=0)
    good = write_tiny_checkpoint(pytester.path / "good.pt", seed=1)
    result = run_gate(
        pytester,
        str(suite),
        "--model",
        str(good),
        "--modelqa-baseline",
        str(base),
        "-k",
        "macro_f1",
    )
    result.stdout.fnmatch_lines(
        [
            "*ModelQAWarning: good: classes with no test items: violet; their recall "
            "is set to 0.0"
        ]
    )


def test_exit_codes(pytester):
    suite = write_suite(pytester.path)
    base = write_tiny_checkpoint(pytester.path / "base.pt", seed=0)
    same = pytester.path / "same.pt"
    shutil.copy2(base, same)
    gate = (str(suite), "--modelqa-baseline", str(base), "-k", "zero_shot")
    failed = run_gate(pytester, *gate, "--model", str(same))
    assert failed.ret == pytest.ExitCode.TESTS_FAILED
    usage = run_gate(pytester, *gate, "--model", "nowhere.pt")
    assert usage.ret == pytest.ExitCode.USAGE_ERROR
    usage.stderr.fnmatch_lines(["ERROR: --model: checkpoint not found: nowhere.pt"])
    inside_file = str(base / "results.json")
    usage = run_gate(
        pytester, *gate, "--model", str(same), "--modelqa-json", inside_file
    )
    assert usage.ret == pytest.ExitCode.USAGE_ERROR
    usage.stderr.fnmatch_lines(
        ["ERROR: --modelqa-json: cannot create the folder of *base.pt*"]
    )


def test_unwritable_results_file_is_not_a_pass(pytester):
    suite = write_suite(pytester.path)
    base = write_tiny_checkpoint(pytester.path / "base.pt", seed=0)
    good = write_tiny_checkpoint(pytester.path / "good.pt", seed=1)
    # A folder where the partial file goes makes the write fail after the run.
    (pytester.path / "out" / ".results.json.partial").mkdir(parents=True)
    result = run_gate(
        pytester,
        str(suite),
        "--model",
        str(good),
        "--modelqa-baseline",
        str(base),
        "-k",
        "zero_shot",
        "--modelqa-json",
        str(pytester.path / "out" / "results.json"),
    )
    result.assert_outcomes(passed=1)
    assert result.ret == pytest.ExitCode.INTERNAL_ERROR
    result.stdout.fnmatch_lines(
        ["ERROR: --modelqa-json: could not write *results.json (*Is a directory*"]
    )


def test_internal_error_is_not_a_pass(pytester, monkeypatch):
    from pytest_modelqa import evaluation

    def broken(*args, **kwargs):
        raise RuntimeError("a bug in the metric code")

    monkeypatch.setattr(evaluation, "rank_score", broken)
    suite = write_suite(pytester.path)
    base = write_tiny_checkpoint(pytester.path / "base.pt", seed=0)
    good = write_tiny_checkpoint(pytester.path / "good.pt", seed=1)
    result = run_gate(
        pytester, str(suite), "--model", str(good), "--modelqa-baseline", str(base)
    )
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed", 0) == 0
    assert "ACCEPTABLE" not in result.stdout.str()
    result.stdout.fnmatch_lines(["*RuntimeError: a bug in the metric code"])


def test_interrupted_gate_is_not_a_pass(pytester, monkeypatch):
    from pytest_modelqa import runner

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "encode_images", interrupted)
    suite = write_suite(pytester.path)
    base = write_tiny_checkpoint(pytester.path / "base.pt", seed=0)
    good = write_tiny_checkpoint(pytester.path / "good.pt", seed=1)
    # no_reraise_ctrlc keeps pytester from raising the interrupt in this session.
    result = run_gate(
        pytester,
        str(suite),
        "--model",
        str(good),
        "--modelqa-baseline",
        str(base),
        no_reraise_ctrlc=True,
    )
    assert result.ret == pytest.ExitCode.INTERRUPTED
    assert "passed" not in result.parseoutcomes()
    result.stdout.fnmatch_lines(["*KeyboardInterrupt*"])


suite_keys = st.sampled_from(
    [
        "name",
        "catalog",
        "columns",
        "category",
        "attribute",
        "prompt",
        "none_policy",
        "synonyms",
        "classification",
        "split",
        "top_k",
        "checks",
        "zero_shot_accuracy",
        "rule",
        "tolerance",
        "retrieval",
        "cases",
        "min_matches",
        "gallery_split",
        "benchmarks",
        "statistics",
        "resamples",
        "baseline_sha256",
    ]
)
suite_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 2000),
    st.floats(allow_nan=True),
    st.text(max_size=12),
    st.sampled_from(
        ["catalog", "shoelace_colour", "{value}", "{x}", "test", "all", "../x", "*"]
    ),
)
suite_documents = st.recursive(
    suite_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(suite_keys, children, max_size=6),
    ),
    max_leaves=25,
)


@st.composite
def mutated_suites(draw) -> dict:
    """Draw a valid suite with one section or one key replaced by a random value."""
    suite = {
        "catalog": "catalog",
        "columns": {"category": "category", "attribute": "shoelace_colour"},
        "attribute": {"prompt": "{value} shoelace", "none_policy": "exclude"},
        "classification": {"split": "test", "top_k": 3, "checks": {}},
        "retrieval": {"min_matches": 1, "cases": "cases.yaml"},
        "statistics": {"resamples": 1000, "confidence": 0.9},
    }
    section = draw(st.sampled_from(sorted(suite)))
    if isinstance(suite[section], dict) and draw(st.booleans()):
        key = draw(st.sampled_from(sorted(suite[section])))
        suite[section][key] = draw(suite_documents)
    else:
        suite[section] = draw(suite_documents)
    return suite


@pytest.fixture(scope="module")
def fuzz_suite(tmp_path_factory) -> Path:
    return write_suite(tmp_path_factory.mktemp("fuzz"), test_items=10)


def _load_or_suite_error(suite: Path) -> None:
    try:
        load_suite(suite / "modelqa-suite.yaml", catalog_dirs=[])
    except SuiteError as error:
        assert str(error).startswith(str(suite)), str(error)


@settings(max_examples=150, deadline=None)
@given(document=suite_documents | mutated_suites())
def test_fuzzed_suite_documents_give_clean_errors(fuzz_suite, document):
    text = yaml.safe_dump(document)
    (fuzz_suite / "modelqa-suite.yaml").write_text(text)
    _load_or_suite_error(fuzz_suite)


@settings(max_examples=100, deadline=None)
@given(text=st.text(max_size=120) | st.binary(max_size=120).map(repr))
def test_fuzzed_suite_text_gives_clean_errors(fuzz_suite, text):
    (fuzz_suite / "modelqa-suite.yaml").write_text(text)
    _load_or_suite_error(fuzz_suite)


@settings(max_examples=60, deadline=None)
@given(raw=st.binary(max_size=120))
def test_fuzzed_suite_bytes_give_clean_errors(fuzz_suite, raw):
    (fuzz_suite / "modelqa-suite.yaml").write_bytes(raw)
    _load_or_suite_error(fuzz_suite)


def test_split_of_none_values_is_rejected(tmp_path):
    suite = write_suite(tmp_path)
    manifest = suite / "catalog" / "manifest.csv"
    frame = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    frame.loc[frame["split"] == "test", "shoelace_colour"] = "none"
    frame.to_csv(manifest, index=False)
    with pytest.raises(
        SuiteError,
        match=r"modelqa-suite\.yaml: classification\.split: catalog 'catalog' has no "
        r"items in split 'test' with a shoelace_colour other than 'none', and "
        r"attribute\.none_policy exclude leaves those out; use another split, or set "
        r"none_policy: class",
    ):
        load_suite(suite / "modelqa-suite.yaml", catalog_dirs=[])


def test_empty_benchmark_catalog_is_rejected(tmp_path):
    suite = write_suite(tmp_path)
    (suite / "empty").mkdir()
    (suite / "empty" / "manifest.csv").write_text("id,image,category,split\n")
    path = suite / "modelqa-suite.yaml"
    path.write_text(path.read_text() + "benchmarks:\n  blank: {catalog: empty}\n")
    with pytest.raises(
        SuiteError,
        match=r"modelqa-suite\.yaml:5: benchmarks\.blank\.catalog: catalog 'empty' has "
        r"no items to benchmark on",
    ):
        load_suite(path, catalog_dirs=[])
