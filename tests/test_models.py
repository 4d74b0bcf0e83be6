"""Tests of safe, checked model loading: bad files, unsafe pickles, activations."""

from __future__ import annotations

import copy
import hashlib
import json
import pickle
import shutil
import zipfile
from pathlib import Path

import open_clip
import pytest
import safetensors.torch
import torch
from conftest import TINY_MODEL_CFG, TINY_PREPROCESS_CFG, write_tiny_checkpoint

from pytest_modelqa.models import (
    CHECKPOINT_FORMAT,
    ModelLoadError,
    ModelLoadWarning,
    build_model,
    build_preprocess,
    check_spec,
    describe_model,
    file_sha256,
    folder_sha256,
    load_model,
    read_checkpoint,
    save_checkpoint,
)


class CreateFileOnUnpickle:
    """An object whose unpickling creates a file: a stand-in for malicious code."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def tiny_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return build_model(TINY_MODEL_CFG).state_dict()


def write_tiny_config(path: Path, model_cfg: dict = TINY_MODEL_CFG) -> Path:
    path.write_text(json.dumps(model_cfg))
    return path


@pytest.fixture(autouse=True)
def offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the Hugging Face cache at an empty folder and forbid downloads."""
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


# --- Files that are not loadable checkpoints ----------------------------------------


def test_missing_file_names_path(tmp_path: Path):
    path = tmp_path / "nowhere" / "epoch_3.pt"
    with pytest.raises(ModelLoadError, match=r"checkpoint not found: .*epoch_3\.pt"):
        load_model(str(path))


def test_missing_weights_after_arch(tmp_path: Path):
    config = write_tiny_config(tmp_path / "tiny.json")
    spec = f"{config}:{tmp_path / 'missing.safetensors'}"
    with pytest.raises(
        ModelLoadError, match=r"weights file not found: .*missing\.safetensors"
    ):
        load_model(spec)


def test_empty_file_names_path(tmp_path: Path):
    path = tmp_path / "empty.pt"
    path.touch()
    with pytest.raises(
        ModelLoadError, match=r"checkpoint is empty \(0 bytes\): .*empty"
    ):
        load_model(str(path))


def test_truncated_torch_file(tiny_checkpoint: Path):
    data = tiny_checkpoint.read_bytes()
    tiny_checkpoint.write_bytes(data[: len(data) // 2])
    with pytest.raises(
        ModelLoadError, match=r"tiny\.pt: checkpoint is truncated or damaged"
    ):
        load_model(str(tiny_checkpoint))


def test_truncated_safetensors_file(tmp_path: Path):
    path = tmp_path / "weights.safetensors"
    safetensors.torch.save_file(tiny_state_dict(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    config = write_tiny_config(tmp_path / "tiny.json")
    with pytest.raises(
        ModelLoadError, match=r"weights\.safetensors: not a readable safetensors file"
    ):
        load_model(f"{config}:{path}")


def test_text_file_is_not_checkpoint(tmp_path: Path):
    path = tmp_path / "notes.pt"
    path.write_text("epoch 3 looked best\n")
    with pytest.raises(
        ModelLoadError,
        match=r"notes\.pt: not a checkpoint: expected a torch checkpoint \(zip or "
        r"pickle\) or a safetensors file, but the file starts with b'epoch 3 '",
    ):
        load_model(str(path))


def test_json_file_hints_at_arch(tmp_path: Path):
    config = write_tiny_config(tmp_path / "tiny.json")
    with pytest.raises(
        ModelLoadError, match=r"looks like JSON: .*CONFIG\.json:WEIGHTS"
    ):
        load_model(str(config))


def test_zip_without_data_pkl(tmp_path: Path):
    path = tmp_path / "images.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("photo.txt", "not a tensor")
    with pytest.raises(ModelLoadError, match=r"a zip archive without the data\.pkl"):
        load_model(str(path))


# torch 2.14 deprecates torch.jit.script, which writes the archive this test needs.
@pytest.mark.filterwarnings(r"ignore:`torch\.jit\.script` is deprecated:FutureWarning")
def test_torchscript_archive_rejected(tmp_path: Path):
    path = tmp_path / "scripted.pt"
    torch.jit.script(torch.nn.Linear(2, 2)).save(str(path))
    with pytest.raises(ModelLoadError, match=r"scripted\.pt: a TorchScript archive"):
        load_model(str(path))


def test_tensor_file_is_not_state_dict(tmp_path: Path):
    path = tmp_path / "tensor.pt"
    torch.save(torch.ones(3), path)
    with pytest.raises(
        ModelLoadError,
        match=r"tensor\.pt: not a model checkpoint: it contains a Tensor",
    ):
        load_model(str(path))


def test_dict_of_numbers_is_not_state_dict(tmp_path: Path):
    path = tmp_path / "metrics.pt"
    torch.save({"accuracy": 0.9}, path)
    with pytest.raises(
        ModelLoadError, match=r"entry 'accuracy' of its state_dict is a float"
    ):
        load_model(str(path))


def test_folder_without_model(tmp_path: Path):
    folder = tmp_path / "run"
    folder.mkdir()
    with pytest.raises(
        ModelLoadError,
        match=r"no model found: neither open_clip_config\.json .* nor config\.json",
    ):
        load_model(str(folder))


# --- Never unpickling arbitrary objects ---------------------------------------------


def test_marker_payload_works(tmp_path: Path):
    # Proves that the payload the tests below use does create its file when a plain
    # unpickler runs it, so its absence there means it never ran.
    marker = tmp_path / "marker"
    pickle.loads(pickle.dumps(CreateFileOnUnpickle(marker))).close()
    assert marker.exists()


def _write_raw_pickle(folder: Path, marker: Path) -> str:
    path = folder / "raw.pkl"
    path.write_bytes(pickle.dumps({"state_dict": CreateFileOnUnpickle(marker)}))
    return str(path)


def _write_trainer_format(folder: Path, marker: Path) -> str:
    path = folder / "trainer.pt"
    torch.save(
        {
            "format": CHECKPOINT_FORMAT,
            "model_cfg": TINY_MODEL_CFG,
            "state_dict": CreateFileOnUnpickle(marker),
        },
        path,
    )
    return str(path)


def _write_with_arch(folder: Path, marker: Path) -> str:
    path = folder / "epoch_2.pt"
    torch.save({"epoch": 2, "state_dict": CreateFileOnUnpickle(marker)}, path)
    return f"{write_tiny_config(folder / 'tiny.json')}:{path}"


def _write_open_clip_folder(folder: Path, marker: Path) -> str:
    (folder / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": TINY_MODEL_CFG})
    )
    torch.save(CreateFileOnUnpickle(marker), folder / "open_clip_pytorch_model.bin")
    return f"local-dir:{folder}"


def _write_transformers_folder(folder: Path, marker: Path) -> str:
    (folder / "config.json").write_text(json.dumps({"model_type": "clip"}))
    torch.save(
        {"logit_scale": CreateFileOnUnpickle(marker)}, folder / "pytorch_model.bin"
    )
    return f"hf:{folder}"


@pytest.mark.parametrize(
    "write",
    [
        _write_raw_pickle,
        _write_trainer_format,
        _write_with_arch,
        _write_open_clip_folder,
        _write_transformers_folder,
    ],
    ids=["raw-pickle", "trainer", "arch-spec", "local-dir", "transformers"],
)
def test_unsafe_pickle_never_runs(tmp_path: Path, write):
    folder = tmp_path / "model"
    folder.mkdir()
    marker = tmp_path / "marker"
    spec = write(folder, marker)
    with pytest.raises(
        ModelLoadError,
        match=r"rejected, because it contains Python objects other than tensors .* "
        r"re-save its state_dict alone",
    ) as caught:
        load_model(spec)
    # torch names the first object it rejects: the global io.open, or for a plain
    # pickle of protocol 4 the FRAME opcode (149) that precedes it.
    assert "torch.load reported 'Unsupported " in str(caught.value)
    assert not marker.exists()


# --- Weights that load but are wrong ------------------------------------------------


@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_non_finite_weight_named(tmp_path: Path, value: float):
    state_dict = tiny_state_dict()
    state_dict["visual.proj"][0, 0] = value
    path = save_checkpoint(
        tmp_path / "bad.pt", {"model_cfg": TINY_MODEL_CFG, "state_dict": state_dict}
    )
    with pytest.raises(
        ModelLoadError,
        match=r"bad\.pt: weight visual\.proj contains NaN or infinity \(1 of 1024",
    ):
        load_model(str(path))


def test_non_finite_safetensors_named(tmp_path: Path):
    state_dict = tiny_state_dict()
    state_dict["logit_scale"] = torch.tensor(float("-inf"))
    path = tmp_path / "bad.safetensors"
    safetensors.torch.save_file(state_dict, path)
    with pytest.raises(
        ModelLoadError, match=r"weight logit_scale contains NaN or infinity"
    ):
        load_model(str(path), arch=TINY_MODEL_CFG)


def test_other_architecture_does_not_fit(tmp_path: Path):
    path = tmp_path / "weights.safetensors"
    safetensors.torch.save_file(tiny_state_dict(), path)
    wider = copy.deepcopy(TINY_MODEL_CFG)
    wider["vision_cfg"]["width"] = 48
    wider["text_cfg"]["layers"] = 2
    with pytest.raises(
        ModelLoadError,
        match=r"the weights do not fit the model config passed as arch: "
        r"12 missing \(transformer\.resblocks\.1\..*; 20 of another shape "
        r"\(visual\..* is \(32,\) in the file but \(48,\) in the model",
    ):
        load_model(str(path), arch=wider)


def test_trainer_checkpoint_does_not_fit(tmp_path: Path):
    state_dict = tiny_state_dict()
    del state_dict["visual.proj"]
    path = save_checkpoint(
        tmp_path / "cut.pt", {"model_cfg": TINY_MODEL_CFG, "state_dict": state_dict}
    )
    with pytest.raises(
        ModelLoadError,
        match=r"cut\.pt: the weights do not fit the model config in the checkpoint: "
        r"1 missing \(visual\.proj\)",
    ):
        load_model(str(path))


def test_newer_checkpoint_format(tiny_checkpoint: Path):
    payload = read_checkpoint(tiny_checkpoint)
    payload["format_version"] = 99
    torch.save(payload, tiny_checkpoint)
    with pytest.raises(ModelLoadError, match=r"format version 99 is newer"):
        load_model(str(tiny_checkpoint))


# --- Activations: QuickGELU against GELU --------------------------------------------


@pytest.mark.parametrize("quick_gelu", [False, True])
def test_trainer_records_activation(tmp_path: Path, quick_gelu: bool):
    model_cfg = {**TINY_MODEL_CFG, "quick_gelu": quick_gelu}
    torch.manual_seed(0)
    model = build_model(model_cfg)
    path = save_checkpoint(
        tmp_path / "ckpt.pt", {"model_cfg": model_cfg, "state_dict": model.state_dict()}
    )
    assert read_checkpoint(path)["model_cfg"]["quick_gelu"] is quick_gelu
    loaded = load_model(str(path))
    activation = loaded.model.visual.transformer.resblocks[0].mlp.gelu
    expected = open_clip.transformer.QuickGELU if quick_gelu else torch.nn.GELU
    assert type(activation) is expected


def test_trainer_default_activation_explicit(tiny_checkpoint: Path):
    assert "quick_gelu" not in TINY_MODEL_CFG
    assert read_checkpoint(tiny_checkpoint)["model_cfg"]["quick_gelu"] is False
    assert load_model(str(tiny_checkpoint)).model_cfg["quick_gelu"] is False


def test_tag_activation_mismatch_warns():
    # ViT-B-32's config uses GELU; open_clip's "openai" tag was trained with
    # QuickGELU. The warning comes before the weights are looked up, and the empty
    # offline cache then stops the load before anything is downloaded.
    with (
        pytest.warns(
            ModelLoadWarning,
            match=r"ViT-B-32:openai: activation mismatch: the model uses GELU "
            r"\(quick_gelu=False\), but pretrained tag 'openai' of ViT-B-32 was "
            r"trained with QuickGELU \(quick_gelu=True\).*; "
            r"use ViT-B-32-quickgelu:openai",
        ),
        pytest.raises(
            ModelLoadError, match=r"were not found in the Hugging Face cache"
        ),
    ):
        load_model("ViT-B-32:openai")


def test_tag_activation_match_is_silent():
    # pyproject turns warnings into errors, so any warning here fails the test.
    with pytest.raises(
        ModelLoadError,
        match=r"ViT-B-32-quickgelu:openai: the weights of pretrained tag 'openai' "
        r"\(.* of hf-hub:timm/vit_base_patch32_clip_224\.openai\) were not found in "
        r"the Hugging Face cache .*HF_HUB_OFFLINE is set",
    ):
        load_model("ViT-B-32-quickgelu:openai")


def test_fine_tune_activation_mismatch_warns(tmp_path: Path):
    path = write_tiny_checkpoint(
        tmp_path / "tuned.pt", base={"spec": "ViT-B-32:openai", "sha256": "0" * 64}
    )
    with pytest.warns(
        ModelLoadWarning,
        match=r"tuned\.pt \(fine-tuned from ViT-B-32:openai\): activation mismatch",
    ):
        loaded = load_model(str(path))
    assert loaded.info["base"]["spec"] == "ViT-B-32:openai"


# --- Specs that name no model -------------------------------------------------------


def test_empty_spec():
    with pytest.raises(ModelLoadError, match=r"^empty model spec$"):
        load_model("  ")


def test_arch_without_weights():
    with pytest.raises(
        ModelLoadError,
        match=r"ViT-B-32 names an open_clip architecture but no weights; write "
        r"ViT-B-32:TAG \(tags: openai, .*\) or ViT-B-32:PATH",
    ):
        load_model("ViT-B-32")


def test_unknown_arch_in_spec(tmp_path: Path):
    with pytest.raises(
        ModelLoadError, match=r"unknown model spec 'ViT-Q-99:w\.pt': 'ViT-Q-99' is not"
    ):
        load_model("ViT-Q-99:w.pt")


def test_unknown_arch_argument(tmp_path: Path):
    path = tmp_path / "weights.safetensors"
    safetensors.torch.save_file(tiny_state_dict(), path)
    with pytest.raises(ModelLoadError, match=r"unknown architecture 'ViT-Q-99'"):
        load_model(str(path), arch="ViT-Q-99")


def test_bad_hub_id():
    with pytest.raises(ModelLoadError, match=r"is hf-hub:ORG/NAME"):
        load_model("hf-hub:just-a-name")


def test_invalid_arch_config(tmp_path: Path):
    path = tmp_path / "weights.safetensors"
    safetensors.torch.save_file(tiny_state_dict(), path)
    with pytest.raises(
        ModelLoadError,
        match=r"the model config passed as arch is not an open_clip model config: "
        r"it lacks embed_dim",
    ):
        load_model(str(path), arch={"vision_cfg": {}, "text_cfg": {}})


def test_check_spec_accepts_loadable_forms(tmp_path: Path, tiny_checkpoint: Path):
    config = write_tiny_config(tmp_path / "tiny.json")
    folder = tmp_path / "clip-folder"
    folder.mkdir()
    for spec in (
        str(tiny_checkpoint),
        str(folder),
        f"local-dir:{folder}",
        f"hf:{folder}",
        "hf-hub:patrickjohncyh/fashion-clip",
        "ViT-B-32-quickgelu:openai",
        f"ViT-B-32:{tiny_checkpoint}",
        f"{config}:{tiny_checkpoint}",
    ):
        check_spec(spec)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", r"^empty model spec$"),
        ("runs/absent/epoch_1.pt", r"^checkpoint not found: runs/absent/epoch_1\.pt$"),
        ("local-dir:absent", r"local-dir:absent: folder not found: absent"),
        ("hf:absent", r"hf:absent: folder not found: absent"),
        ("hf-hub:fashion-clip", r"is hf-hub:ORG/NAME"),
        ("ViT-B-32", r"names an open_clip architecture but no weights"),
        ("ViT-B-32:absent.pt", r"weights file not found: absent\.pt, and it is not"),
        ("ViT-Q-99:absent.pt", r"'ViT-Q-99' is not a built-in or registered"),
    ],
)
def test_check_spec_rejects(spec: str, message: str):
    with pytest.raises(ModelLoadError, match=message):
        check_spec(spec)


# --- Fingerprints and preprocessing -------------------------------------------------


def test_file_fingerprint_is_content_hash(tiny_checkpoint: Path):
    loaded = load_model(str(tiny_checkpoint))
    assert loaded.sha256 == hashlib.sha256(tiny_checkpoint.read_bytes()).hexdigest()
    assert loaded.sha256 == file_sha256(tiny_checkpoint)
    assert describe_model(loaded)["sha256"] == loaded.sha256


def test_folder_fingerprint_is_stable(tmp_path: Path):
    first = tmp_path / "first"
    first.mkdir()
    (first / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": TINY_MODEL_CFG})
    )
    safetensors.torch.save_file(
        tiny_state_dict(), first / "open_clip_model.safetensors"
    )
    second = tmp_path / "elsewhere" / "second"
    shutil.copytree(first, second)
    (second / "README.md").write_text("notes that do not change the model\n")
    (second / ".git").mkdir()
    (second / ".git" / "HEAD").write_text("ref: refs/heads/main\n")

    assert load_model(f"local-dir:{first}").sha256 == load_model(str(second)).sha256
    assert folder_sha256(first) != folder_sha256(second)
    (second / "README.md").unlink()
    assert folder_sha256(first) == folder_sha256(second)

    safetensors.torch.save_file(
        tiny_state_dict(seed=1), second / "open_clip_model.safetensors"
    )
    assert load_model(f"local-dir:{first}").sha256 != load_model(str(second)).sha256


def test_trainer_preprocess_carried(tiny_checkpoint: Path):
    loaded = load_model(str(tiny_checkpoint))
    assert loaded.preprocess_cfg["size"] == 32
    assert loaded.preprocess_cfg["resize_mode"] == TINY_PREPROCESS_CFG["resize_mode"]
    assert loaded.model.visual.preprocess_cfg == loaded.preprocess_cfg


def test_preprocess_size_defaults_to_image_size(tmp_path: Path):
    path = save_checkpoint(
        tmp_path / "bare.pt",
        {"model_cfg": TINY_MODEL_CFG, "state_dict": tiny_state_dict()},
    )
    loaded = load_model(str(path))
    assert loaded.preprocess_cfg["size"] == 32
    crop = [
        step for step in loaded.preprocess.transforms if "Crop" in type(step).__name__
    ]
    assert crop[0].size == (32, 32)
    assert build_preprocess(None, image_size=64).transforms[1].size == (64, 64)
