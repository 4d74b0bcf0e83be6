"""Tests that every checkpoint format loads into the same open_clip model.

Each test writes one format from a tiny real model. A load passes when the loaded
model's embeddings equal those of the model that was written. Nothing is downloaded,
because the Hugging Face caches are built in tmp_path and read with HF_HUB_OFFLINE set.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import huggingface_hub.constants
import open_clip
import pytest
import safetensors.torch
import torch
import transformers
from conftest import TINY_MODEL_CFG, TINY_PREPROCESS_CFG, write_tiny_checkpoint

from pytest_modelqa.models import (
    ModelLoadError,
    ModelLoadWarning,
    build_model,
    file_sha256,
    load_model,
    open_clip_config_from_transformers,
)

TEXTS = ["a red leather boot", "white sneakers with black laces"]
TINY_ARCH = "modelqa-tiny"


@pytest.fixture
def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(TINY_MODEL_CFG).eval()


@pytest.fixture
def pixels() -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(2, 3, 32, 32, generator=generator)  # (B, 3, H, W)


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face cache in tmp_path, in offline mode."""
    cache = tmp_path / "hf-home" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


@pytest.fixture
def tiny_arch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Register the tiny config as an open_clip model name, for this test only."""
    # add_model_config extends two module globals of open_clip.factory; replacing
    # them with copies first lets monkeypatch restore the registry afterwards.
    factory = open_clip.factory
    monkeypatch.setattr(
        factory, "_MODEL_CONFIG_PATHS", list(factory._MODEL_CONFIG_PATHS)
    )
    monkeypatch.setattr(factory, "_MODEL_CONFIGS", dict(factory._MODEL_CONFIGS))
    config_dir = tmp_path / "model-configs"
    config_dir.mkdir()
    (config_dir / f"{TINY_ARCH}.json").write_text(json.dumps(TINY_MODEL_CFG))
    open_clip.add_model_config(config_dir)
    return TINY_ARCH


def assert_same_embeddings(loaded, reference: torch.nn.Module, pixels, *, atol=1e-6):
    tokens = loaded.tokenizer(TEXTS)
    with torch.no_grad():
        image_pair = loaded.model.encode_image(pixels), reference.encode_image(pixels)
        text_pair = loaded.model.encode_text(tokens), reference.encode_text(tokens)
    torch.testing.assert_close(*image_pair, atol=atol, rtol=0)
    torch.testing.assert_close(*text_pair, atol=atol, rtol=0)


def populate_hub_cache(cache: Path, repo_id: str, files: dict[str, Path]) -> Path:
    """Lay files out as huggingface_hub's cache does after a download of main.

    models--ORG--NAME/blobs contains the contents, snapshots/COMMIT links to them by
    file name, and refs/main names COMMIT.
    """
    org, name = repo_id.split("/")
    repo = cache / f"models--{org}--{name}"
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    for filename, source in files.items():
        blob = repo / "blobs" / file_sha256(source)
        shutil.copyfile(source, blob)
        (snapshot / filename).symlink_to(os.path.relpath(blob, snapshot))
    return snapshot


def write_open_clip_folder(
    folder: Path,
    model: torch.nn.Module,
    *,
    weights: str = "open_clip_model.safetensors",
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    config = {"model_cfg": TINY_MODEL_CFG, "preprocess_cfg": TINY_PREPROCESS_CFG}
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    if weights.endswith(".safetensors"):
        safetensors.torch.save_file(model.state_dict(), folder / weights)
    else:
        torch.save(model.state_dict(), folder / weights)
    return folder


# --- The trainer's own checkpoints --------------------------------------------------


def test_trainer_checkpoint(tmp_path: Path, tiny_model, pixels):
    path = write_tiny_checkpoint(tmp_path / "epoch_2.pt", epoch=2, role="candidate")
    loaded = load_model(str(path))
    assert_same_embeddings(loaded, tiny_model, pixels)
    assert loaded.info["format"] == "pytest-modelqa-checkpoint"
    assert loaded.info["epoch"] == 2
    assert loaded.name == "epoch_2"


# --- open_clip_train epoch_N.pt -----------------------------------------------------


def write_open_clip_train_checkpoint(path: Path, model: torch.nn.Module) -> Path:
    """Write what open_clip_train saves under DistributedDataParallel after a step."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.logit_scale.sum().backward()
    optimizer.step()
    optimizer.zero_grad()
    state_dict = {f"module.{key}": value for key, value in model.state_dict().items()}
    torch.save(
        {
            "epoch": 3,
            "name": "2026_01_05-shoelace",
            "state_dict": state_dict,
            "optimizer": optimizer.state_dict(),
        },
        path,
    )
    return path


def test_open_clip_train_needs_arch(tmp_path: Path, tiny_model):
    path = write_open_clip_train_checkpoint(tmp_path / "epoch_3.pt", tiny_model)
    with pytest.raises(
        ModelLoadError,
        match=r"epoch_3\.pt: an open_clip_train checkpoint \(epoch 3\) contains "
        r"weights but not the architecture .* Pass --modelqa-arch NAME",
    ):
        load_model(str(path))


@pytest.mark.parametrize("form", ["name", "json", "dict", "name-spec", "json-spec"])
def test_open_clip_train_with_arch(tmp_path: Path, tiny_arch, tiny_model, pixels, form):
    path = write_open_clip_train_checkpoint(tmp_path / "epoch_3.pt", tiny_model)
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY_MODEL_CFG))
    spec, arch = {
        "name": (str(path), tiny_arch),
        "json": (str(path), str(config)),
        "dict": (str(path), TINY_MODEL_CFG),
        "name-spec": (f"{tiny_arch}:{path}", None),
        "json-spec": (f"{config}:{path}", None),
    }[form]
    loaded = load_model(spec, arch=arch)
    assert_same_embeddings(loaded, tiny_model, pixels)
    assert loaded.info["format"] == "open_clip_train"
    assert loaded.info["epoch"] == 3
    assert loaded.info["name"] == "2026_01_05-shoelace"
    assert loaded.model_cfg == {**TINY_MODEL_CFG, "quick_gelu": False}
    assert loaded.sha256 == file_sha256(path)
    assert loaded.name == "epoch_3"


def test_spec_arch_takes_precedence(tmp_path: Path, tiny_arch, tiny_model, pixels):
    path = write_open_clip_train_checkpoint(tmp_path / "epoch_3.pt", tiny_model)
    loaded = load_model(f"{tiny_arch}:{path}", arch="ViT-B-32")
    assert_same_embeddings(loaded, tiny_model, pixels)


# --- Bare state_dicts in safetensors ------------------------------------------------


def test_safetensors_with_arch_spec(tmp_path: Path, tiny_arch, tiny_model, pixels):
    path = tmp_path / "weights.safetensors"
    safetensors.torch.save_file(tiny_model.state_dict(), path)
    loaded = load_model(f"{tiny_arch}:{path}")
    assert_same_embeddings(loaded, tiny_model, pixels)
    assert loaded.info == {"format": "state_dict", "arch": tiny_arch}
    assert loaded.sha256 == file_sha256(path)
    # open_clip picks the tokenizer of a registered name itself.
    assert loaded.tokenizer.context_length == 16


def test_safetensors_needs_arch(tmp_path: Path, tiny_model):
    path = tmp_path / "weights.safetensors"
    safetensors.torch.save_file(tiny_model.state_dict(), path)
    with pytest.raises(
        ModelLoadError,
        match=r"weights\.safetensors: a bare state_dict contains weights but not the "
        r"architecture .* or write the spec as NAME:.*weights\.safetensors",
    ):
        load_model(str(path))


# --- open_clip folders: local-dir:PATH ----------------------------------------------


@pytest.mark.parametrize(
    "weights", ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
)
def test_local_dir(tmp_path: Path, tiny_model, pixels, weights):
    folder = write_open_clip_folder(tmp_path / "tiny-clip", tiny_model, weights=weights)
    loaded = load_model(f"local-dir:{folder}")
    assert_same_embeddings(loaded, tiny_model, pixels)
    assert loaded.info["format"] == "open_clip"
    assert loaded.info["files"] == sorted(["open_clip_config.json", weights])
    assert loaded.preprocess_cfg["resize_mode"] == "squash"
    assert loaded.name == "tiny-clip"
    # A plain folder path loads the same folder.
    assert load_model(str(folder)).sha256 == loaded.sha256


def test_local_dir_matches_open_clip(tmp_path: Path, tiny_model, pixels):
    folder = write_open_clip_folder(tmp_path / "tiny-clip", tiny_model)
    ours = load_model(f"local-dir:{folder}")
    theirs = open_clip.create_model(f"local-dir:{folder}").eval()
    assert_same_embeddings(ours, theirs, pixels)


def test_local_dir_without_weights(tmp_path: Path, tiny_model):
    folder = write_open_clip_folder(tmp_path / "tiny-clip", tiny_model)
    (folder / "open_clip_model.safetensors").unlink()
    with pytest.raises(
        ModelLoadError,
        match=r"open_clip_config\.json found but no weights .* in .*tiny-clip",
    ):
        load_model(f"local-dir:{folder}")


def test_local_dir_missing_folder(tmp_path: Path):
    with pytest.raises(ModelLoadError, match=r"folder not found: .*absent"):
        load_model(f"local-dir:{tmp_path / 'absent'}")


# --- Hugging Face hub repositories in open_clip's format: hf-hub:ORG/NAME -------------


@pytest.mark.parametrize("variable", ["HF_HUB_CACHE", "HF_HOME"])
def test_hf_hub_open_clip(
    tmp_path: Path, hub_cache, monkeypatch, tiny_model, pixels, variable
):
    if variable == "HF_HOME":
        monkeypatch.delenv("HF_HUB_CACHE")
        monkeypatch.setenv("HF_HOME", str(hub_cache.parent))
    folder = write_open_clip_folder(tmp_path / "upload", tiny_model)
    populate_hub_cache(
        hub_cache,
        "modelqa-test/tiny-open-clip",
        {path.name: path for path in folder.iterdir()},
    )
    loaded = load_model("hf-hub:modelqa-test/tiny-open-clip")
    assert_same_embeddings(loaded, tiny_model, pixels)
    assert loaded.info["format"] == "open_clip"
    assert loaded.name == "tiny-open-clip"
    assert loaded.sha256 == load_model(f"local-dir:{folder}").sha256


def test_hf_hub_cache_readable_by_open_clip(
    tmp_path: Path, hub_cache, monkeypatch, tiny_model, pixels
):
    # open_clip itself finds the repository in the cache the tests lay out.
    # huggingface_hub read HF_HUB_OFFLINE on import, so its constant is set too.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    folder = write_open_clip_folder(tmp_path / "upload", tiny_model)
    populate_hub_cache(
        hub_cache,
        "modelqa-test/tiny-open-clip",
        {path.name: path for path in folder.iterdir()},
    )
    theirs = open_clip.create_model(
        "hf-hub:modelqa-test/tiny-open-clip", cache_dir=str(hub_cache)
    ).eval()
    assert_same_embeddings(
        load_model("hf-hub:modelqa-test/tiny-open-clip"), theirs, pixels
    )


@pytest.mark.parametrize("quick_gelu", [False, True])
def test_hf_hub_pretrained_repo_activation(
    tmp_path: Path, hub_cache, tiny_model, quick_gelu
):
    # open_clip's pretrained config names this repository for ViT-B-32:openai, whose
    # weights were trained with QuickGELU, so a config that sets GELU contradicts them.
    folder = write_open_clip_folder(tmp_path / "upload", tiny_model)
    config = {
        "model_cfg": {**TINY_MODEL_CFG, "quick_gelu": quick_gelu},
        "preprocess_cfg": TINY_PREPROCESS_CFG,
    }
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    repo_id = "timm/vit_base_patch32_clip_224.openai"
    populate_hub_cache(
        hub_cache, repo_id, {path.name: path for path in folder.iterdir()}
    )
    if quick_gelu:
        # pyproject turns warnings into errors, so any warning fails this branch.
        load_model(f"hf-hub:{repo_id}")
        return
    with pytest.warns(
        ModelLoadWarning,
        match=rf"hf-hub:{repo_id} \(the weights of ViT-B-32:openai\): activation "
        r"mismatch: the model uses GELU \(quick_gelu=False\), but pretrained tag "
        r"'openai' of ViT-B-32 was trained with QuickGELU .*; use "
        r"ViT-B-32-quickgelu:openai",
    ):
        load_model(f"hf-hub:{repo_id}")


def test_hf_hub_not_cached(hub_cache):
    with pytest.raises(
        ModelLoadError,
        match=r"hf-hub:modelqa-test/absent: no model found: neither "
        r"open_clip_config\.json .* in the Hugging Face cache .*hub \(HF_HUB_OFFLINE "
        r"is set, so nothing was downloaded",
    ):
        load_model("hf-hub:modelqa-test/absent")


# --- open_clip pretrained tags: ARCH:TAG --------------------------------------------


@pytest.mark.parametrize("tag_quick_gelu", [False, True])
def test_pretrained_tag(
    tmp_path: Path,
    hub_cache,
    monkeypatch,
    tiny_arch,
    tiny_model,
    pixels,
    tag_quick_gelu,
):
    tag_cfg = {
        "hf_hub": "modelqa-test/tiny-tag/",
        "mean": (0.5, 0.5, 0.5),
        "std": (0.25, 0.25, 0.25),
        "interpolation": "bilinear",
        "resize_mode": "squash",
        "quick_gelu": tag_quick_gelu,
    }
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, tiny_arch, {"shoes": tag_cfg})
    weights = tmp_path / "open_clip_model.safetensors"
    safetensors.torch.save_file(tiny_model.state_dict(), weights)
    populate_hub_cache(hub_cache, "modelqa-test/tiny-tag", {weights.name: weights})
    spec = f"{tiny_arch}:shoes"
    if tag_quick_gelu:
        with pytest.warns(ModelLoadWarning, match=r"pretrained tag 'shoes' of"):
            loaded = load_model(spec)
    else:
        loaded = load_model(spec)
    assert_same_embeddings(loaded, tiny_model, pixels)
    assert loaded.info == {
        "format": "open_clip-pretrained",
        "arch": tiny_arch,
        "tag": "shoes",
    }
    assert loaded.preprocess_cfg["mean"] == [0.5, 0.5, 0.5]
    assert loaded.preprocess_cfg["interpolation"] == "bilinear"
    assert loaded.sha256 == file_sha256(weights)


# --- Hugging Face transformers CLIP (FashionCLIP's format) --------------------------


def tiny_transformers_clip(hidden_act: str = "quick_gelu"):
    """Build a tiny transformers CLIPModel with every weight randomised.

    The towers differ in width, heads, MLP ratio and layer norm epsilon, and the
    projection in size, so a swapped or untransposed tensor cannot fit by accident.
    """
    config = transformers.CLIPConfig(
        text_config={
            "vocab_size": 49408,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 16,
            "hidden_act": hidden_act,
            "layer_norm_eps": 1e-3,
        },
        vision_config={
            "hidden_size": 48,
            "intermediate_size": 192,
            "num_hidden_layers": 2,
            "num_attention_heads": 3,
            "image_size": 32,
            "patch_size": 8,
            "hidden_act": hidden_act,
        },
        projection_dim=24,
    )
    torch.manual_seed(2)
    model = transformers.CLIPModel(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.2)
    return model


def clip_tokenizer_files(tokenizer: open_clip.SimpleTokenizer) -> tuple[dict, list]:
    """Return open_clip's CLIP BPE vocabulary and merges in transformers' naming."""
    vocab = dict(tokenizer.encoder)
    vocab["<|startoftext|>"] = vocab.pop("<start_of_text>")
    vocab["<|endoftext|>"] = vocab.pop("<end_of_text>")
    merges = sorted(tokenizer.bpe_ranks, key=tokenizer.bpe_ranks.get)
    return vocab, merges


def save_transformers_folder(model, folder: Path, *, weights: str = "safetensors"):
    """Save like CLIPModel.save_pretrained, with FashionCLIP's companion files."""
    if weights == "sharded":
        model.save_pretrained(folder, max_shard_size="2MB")
    else:
        model.save_pretrained(folder)
    if weights == "bin":
        # Older uploads ship pytorch_model.bin, some with position_ids buffers.
        (folder / "model.safetensors").unlink()
        state_dict = dict(model.state_dict())
        state_dict["text_model.embeddings.position_ids"] = torch.arange(16)[None]
        torch.save(state_dict, folder / "pytorch_model.bin")
    preprocessor = {
        "image_processor_type": "CLIPImageProcessor",
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "resample": 3,
        "size": {"shortest_edge": 32},
        "crop_size": {"height": 32, "width": 32},
        "do_center_crop": True,
    }
    (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor))
    vocab, merges = clip_tokenizer_files(open_clip.SimpleTokenizer())
    transformers.CLIPTokenizer(vocab=vocab, merges=merges).save_pretrained(folder)
    return folder


def transformers_features(output) -> torch.Tensor:
    # transformers 5 returns a model output whose pooler_output is the projected
    # embedding; transformers 4 returned the tensor itself.
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def assert_matches_transformers(loaded, reference, folder: Path, pixels):
    hf_tokenizer = transformers.CLIPTokenizer.from_pretrained(folder)
    hf_ids = hf_tokenizer(
        TEXTS, padding="max_length", max_length=16, return_tensors="pt"
    )["input_ids"]
    open_clip_ids = loaded.tokenizer(TEXTS)
    # Both tokenizers agree up to the end-of-text token; they pad differently (0
    # and 49407), which neither model's pooling reads.
    for ours, theirs in zip(open_clip_ids, hf_ids, strict=True):
        end = int((ours == 49407).nonzero()[0]) + 1
        assert ours[:end].tolist() == theirs[:end].tolist()
    with torch.no_grad():
        image = loaded.model.encode_image(pixels)
        hf_image = transformers_features(
            reference.get_image_features(pixel_values=pixels)
        )
        text = loaded.model.encode_text(open_clip_ids)
        hf_text = transformers_features(reference.get_text_features(input_ids=hf_ids))
    torch.testing.assert_close(image, hf_image, atol=1e-5, rtol=0)
    torch.testing.assert_close(text, hf_text, atol=1e-5, rtol=0)
    torch.testing.assert_close(
        loaded.model.logit_scale, reference.logit_scale, atol=0, rtol=0
    )


@pytest.mark.parametrize("hidden_act", ["quick_gelu", "gelu"])
@pytest.mark.parametrize("weights", ["safetensors", "bin", "sharded"])
def test_transformers_folder(tmp_path: Path, pixels, hidden_act, weights):
    reference = tiny_transformers_clip(hidden_act)
    folder = save_transformers_folder(
        reference, tmp_path / "fashion-clip", weights=weights
    )
    loaded = load_model(str(folder))
    assert_matches_transformers(loaded, reference, folder, pixels)
    assert loaded.model_cfg["quick_gelu"] is (hidden_act == "quick_gelu")
    assert loaded.model_cfg["embed_dim"] == 24
    assert loaded.info["format"] == "transformers-clip"
    assert "tokenizer.json" in loaded.info["files"]
    assert loaded.preprocess_cfg["size"] == 32
    assert loaded.name == "fashion-clip"


def test_transformers_spec_forms(tmp_path: Path):
    folder = save_transformers_folder(tiny_transformers_clip(), tmp_path / "fclip")
    hashes = {load_model(spec).sha256 for spec in (str(folder), f"hf:{folder}")}
    assert len(hashes) == 1
    assert load_model(f"local-dir:{folder}").sha256 in hashes


def test_transformers_fingerprint_is_folder_hash(tmp_path: Path):
    first = save_transformers_folder(tiny_transformers_clip(), tmp_path / "a" / "clip")
    second = tmp_path / "b" / "clip"
    shutil.copytree(first, second)
    assert load_model(f"hf:{first}").sha256 == load_model(f"hf:{second}").sha256


def test_hf_hub_transformers(tmp_path: Path, hub_cache, pixels):
    # The layout of a FashionCLIP download: config.json, weights, preprocessor and
    # tokenizer files, and no open_clip_config.json.
    reference = tiny_transformers_clip()
    folder = save_transformers_folder(reference, tmp_path / "upload")
    populate_hub_cache(
        hub_cache,
        "modelqa-test/tiny-fashion-clip",
        {path.name: path for path in folder.iterdir()},
    )
    loaded = load_model("hf-hub:modelqa-test/tiny-fashion-clip")
    assert_matches_transformers(loaded, reference, folder, pixels)
    assert loaded.info["format"] == "transformers-clip"
    assert loaded.name == "tiny-fashion-clip"


def test_transformers_vocab_mismatch(tmp_path: Path):
    folder = save_transformers_folder(tiny_transformers_clip(), tmp_path / "fclip")
    vocab, _ = clip_tokenizer_files(open_clip.SimpleTokenizer())
    vocab["a</w>"], vocab["the</w>"] = vocab["the</w>"], vocab["a</w>"]
    (folder / "vocab.json").write_text(json.dumps(vocab))
    with pytest.raises(
        ModelLoadError,
        match=r"the vocabulary in vocab\.json differs from the CLIP tokenizer "
        r"open_clip uses \(49408 tokens, 2 of CLIP's with another id\)",
    ):
        load_model(f"hf:{folder}")


def test_transformers_unsupported_activation(tmp_path: Path):
    folder = save_transformers_folder(tiny_transformers_clip(), tmp_path / "fclip")
    config = json.loads((folder / "config.json").read_text())
    config["text_config"]["hidden_act"] = "gelu_new"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        ModelLoadError,
        match=r"hidden_act is 'gelu_new' \(text\) and 'quick_gelu' \(vision\); "
        r"open_clip's CLIP takes 'quick_gelu' or 'gelu' for both towers",
    ):
        load_model(f"hf:{folder}")


def test_transformers_without_weights(tmp_path: Path):
    folder = tmp_path / "fclip"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "clip"}))
    with pytest.raises(
        ModelLoadError, match=r"config\.json found but no weights \(model\.safetensors"
    ):
        load_model(f"hf:{folder}")


def test_transformers_other_model_type(tmp_path: Path):
    folder = tmp_path / "siglip"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "siglip"}))
    with pytest.raises(ModelLoadError, match=r"model_type is 'siglip', not 'clip'"):
        load_model(str(folder))


def test_transformers_config_dicts_match_transformers():
    # Old config.json files carry text_config_dict and vision_config_dict beside
    # text_config and vision_config; transformers lets the *_dict entries, completed
    # with the defaults, win. The conversion must read the same numbers.
    config = {
        "model_type": "clip",
        "projection_dim": 64,
        "text_config": {"hidden_size": 999, "num_hidden_layers": 7},
        "text_config_dict": {"hidden_size": 128, "num_attention_heads": 4},
        "vision_config": {
            "hidden_size": 96,
            "num_attention_heads": 3,
            "patch_size": 16,
        },
        "vision_config_dict": None,
    }
    parsed = transformers.CLIPConfig(
        **{k: v for k, v in config.items() if v is not None}
    )
    model_cfg = open_clip_config_from_transformers(config)
    text, vision = model_cfg["text_cfg"], model_cfg["vision_cfg"]
    assert text["width"] == parsed.text_config.hidden_size == 128
    assert text["layers"] == parsed.text_config.num_hidden_layers
    assert text["heads"] == parsed.text_config.num_attention_heads
    assert vision["width"] == parsed.vision_config.hidden_size == 96
    assert vision["head_width"] == 96 // parsed.vision_config.num_attention_heads
    assert vision["patch_size"] == parsed.vision_config.patch_size == 16
    assert model_cfg["embed_dim"] == parsed.projection_dim == 64
    assert model_cfg["quick_gelu"] is (parsed.text_config.hidden_act == "quick_gelu")
