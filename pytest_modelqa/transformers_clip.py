"""Conversion of Hugging Face transformers CLIP configs and weights to open_clip.

FashionCLIP is published in this format. The conversion needs no transformers
install: it maps config.json onto an open_clip model config and renames the state
dict's keys, merging the separate q, k and v projections into open_clip's in_proj.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from pytest_modelqa.errors import ModelLoadError

# Defaults of transformers 5.25's CLIPTextConfig and CLIPVisionConfig, for keys a
# config.json leaves out; only the keys the conversion reads are listed.
TRANSFORMERS_TEXT_DEFAULTS = {
    "vocab_size": 49408,
    "hidden_size": 512,
    "intermediate_size": 2048,
    "num_hidden_layers": 12,
    "num_attention_heads": 8,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "eos_token_id": 49407,
}
TRANSFORMERS_VISION_DEFAULTS = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "num_channels": 3,
    "image_size": 224,
    "patch_size": 32,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
}
TRANSFORMERS_PROJECTION_DIM = 512  # CLIPConfig.projection_dim's default
OPEN_CLIP_LAYER_NORM_EPS = 1e-5  # torch.nn.LayerNorm's default, used by open_clip

# Renames from transformers' CLIPModel keys to open_clip's CLIP keys, as pairs of
# (transformers prefix, open_clip prefix). A key takes its longest matching prefix.
_TRANSFORMERS_RENAMES = (
    ("text_model.embeddings.token_embedding.weight", "token_embedding.weight"),
    ("text_model.embeddings.position_embedding.weight", "positional_embedding"),
    ("text_model.encoder.layers.", "transformer.resblocks."),
    ("text_model.final_layer_norm.", "ln_final."),
    ("vision_model.embeddings.class_embedding", "visual.class_embedding"),
    ("vision_model.embeddings.patch_embedding.weight", "visual.conv1.weight"),
    (
        "vision_model.embeddings.position_embedding.weight",
        "visual.positional_embedding",
    ),
    ("vision_model.pre_layrnorm.", "visual.ln_pre."),  # transformers' spelling
    ("vision_model.encoder.layers.", "visual.transformer.resblocks."),
    ("vision_model.post_layernorm.", "visual.ln_post."),
    ("logit_scale", "logit_scale"),
)
_QKV_PROJECTION = re.compile(r"self_attn\.([qkv])_proj\.(weight|bias)")
_TRANSFORMERS_BLOCK_RENAMES = (
    ("self_attn.out_proj.", "attn.out_proj."),
    ("layer_norm1.", "ln_1."),
    ("layer_norm2.", "ln_2."),
    ("mlp.fc1.", "mlp.c_fc."),
    ("mlp.fc2.", "mlp.c_proj."),
)
# transformers keeps the projections as nn.Linear weights, (projection_dim, width);
# open_clip keeps them as (width, embed_dim) matrices that embeddings multiply.
_TRANSFORMERS_PROJECTIONS = {
    "text_projection.weight": "text_projection",
    "visual_projection.weight": "visual.proj",
}
TRANSFORMERS_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def _transformers_tower(config: dict, tower: str, defaults: dict) -> dict:
    """Return the effective text or vision config, as transformers' CLIPConfig does.

    Old config.json files also carry ``text_config_dict`` and
    ``vision_config_dict``; CLIPConfig completes those with the defaults and lets
    the result replace every entry of ``text_config`` and ``vision_config``.
    """
    sub_config = config.get(f"{tower}_config") or {}
    override = config.get(f"{tower}_config_dict")
    if override is not None:
        return {**sub_config, **defaults, **override}
    return {**defaults, **sub_config}


def open_clip_config_from_transformers(config: dict, *, source: str = "config.json"):
    """Translate a transformers CLIPConfig (config.json) into an open_clip model config.

    Raises ModelLoadError for settings open_clip's CLIP cannot reproduce: different
    activations per tower, activations other than GELU and QuickGELU, non-RGB input,
    non-square patches, or an MLP width that is not a multiple of the width.
    """
    if config.get("model_type") != "clip":
        raise ModelLoadError(
            f"{source}: model_type is {config.get('model_type')!r}, not 'clip'; only "
            "transformers CLIPModel checkpoints (both towers) can be converted"
        )
    text = _transformers_tower(config, "text", TRANSFORMERS_TEXT_DEFAULTS)
    vision = _transformers_tower(config, "vision", TRANSFORMERS_VISION_DEFAULTS)
    if vision["num_channels"] != 3:
        raise ModelLoadError(
            f"{source}: vision num_channels is {vision['num_channels']}; open_clip "
            "takes RGB images (3 channels)"
        )
    text_cfg = {
        "context_length": text["max_position_embeddings"],
        "vocab_size": text["vocab_size"],
        "width": text["hidden_size"],
        "heads": text["num_attention_heads"],
        "layers": text["num_hidden_layers"],
        "mlp_ratio": _mlp_ratio(text, "text", source),
        **_text_pooling(text, source),
        **_norm_kwargs(text),
    }
    vision_cfg = {
        "image_size": _square(vision["image_size"], "image_size", source),
        "patch_size": _square(vision["patch_size"], "patch_size", source),
        "width": vision["hidden_size"],
        "layers": vision["num_hidden_layers"],
        "head_width": _head_width(vision, source),
        "mlp_ratio": _mlp_ratio(vision, "vision", source),
        **_norm_kwargs(vision),
    }
    return {
        "embed_dim": config.get("projection_dim") or TRANSFORMERS_PROJECTION_DIM,
        "quick_gelu": _quick_gelu(text, vision, source),
        "vision_cfg": vision_cfg,
        "text_cfg": text_cfg,
    }


def _quick_gelu(text: dict, vision: dict, source: str) -> bool:
    activations = {text["hidden_act"], vision["hidden_act"]}
    if activations == {"quick_gelu"}:
        return True
    if activations == {"gelu"}:
        return False
    raise ModelLoadError(
        f"{source}: hidden_act is {text['hidden_act']!r} (text) and "
        f"{vision['hidden_act']!r} (vision); open_clip's CLIP takes 'quick_gelu' or "
        "'gelu' for both towers"
    )


def _text_pooling(text: dict, source: str) -> dict:
    # transformers 5.25 pools the text at the argmax of the token ids when
    # eos_token_id is 2 (configs older than its fix), else at the first eos_token_id;
    # open_clip's "argmax" and "eos" pool types do the same.
    eos_token_id = text["eos_token_id"]
    if not isinstance(eos_token_id, int):
        raise ModelLoadError(
            f"{source}: text eos_token_id is {eos_token_id!r}; one token id is needed"
        )
    if eos_token_id == 2:
        return {"pool_type": "argmax"}
    return {"pool_type": "eos", "eos_id": eos_token_id}


def _norm_kwargs(tower: dict) -> dict:
    eps = tower["layer_norm_eps"]
    return {} if eps == OPEN_CLIP_LAYER_NORM_EPS else {"norm_kwargs": {"eps": eps}}


def _mlp_ratio(tower: dict, name: str, source: str) -> float:
    width, mlp_width = tower["hidden_size"], tower["intermediate_size"]
    ratio = mlp_width / width
    # open_clip sizes the MLP as int(width * mlp_ratio).
    if int(width * ratio) != mlp_width:
        raise ModelLoadError(
            f"{source}: {name} intermediate_size {mlp_width} is not reproducible as "
            f"int(hidden_size * mlp_ratio) with hidden_size {width}"
        )
    return ratio


def _head_width(vision: dict, source: str) -> int:
    width, heads = vision["hidden_size"], vision["num_attention_heads"]
    if width % heads:
        raise ModelLoadError(
            f"{source}: vision hidden_size {width} is not a multiple of "
            f"num_attention_heads {heads}"
        )
    return width // heads


def _square(value: Any, key: str, source: str) -> int:
    if isinstance(value, int):
        return value
    if isinstance(value, list | tuple) and len(value) == 2 and value[0] == value[1]:
        return int(value[0])
    raise ModelLoadError(f"{source}: vision {key} {value!r} is not square")


def open_clip_state_dict_from_transformers(
    state_dict: dict[str, torch.Tensor], *, source: str = "the checkpoint"
) -> dict[str, torch.Tensor]:
    """Remap a transformers CLIPModel state_dict onto open_clip's CLIP key names.

    Each block's q, k and v projections become one ``in_proj`` (stacked in that
    order, as torch's MultiheadAttention expects); the two projections are
    transposed. Keys that match no rule keep their names, so loading reports them.
    """
    remapped: dict[str, torch.Tensor] = {}
    in_proj: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        if key.endswith(".position_ids"):
            continue  # an index buffer, not a weight
        if key in _TRANSFORMERS_PROJECTIONS:
            remapped[_TRANSFORMERS_PROJECTIONS[key]] = value.T.contiguous()
            continue
        new_key = _rename(key, _TRANSFORMERS_RENAMES)
        if ".resblocks." in new_key:
            block, _, rest = new_key.partition(".resblocks.")
            index, _, rest = rest.partition(".")
            prefix = f"{block}.resblocks.{index}."
            projection = _QKV_PROJECTION.fullmatch(rest)
            if projection is not None:
                part, kind = projection.groups()  # ("q", "weight") for q_proj.weight
                in_proj.setdefault(f"{prefix}attn.in_proj_{kind}", {})[part] = value
                continue
            new_key = prefix + _rename(rest, _TRANSFORMERS_BLOCK_RENAMES)
        remapped[new_key] = value
    for key, parts in in_proj.items():
        missing = [part for part in "qkv" if part not in parts]
        if missing:
            raise ModelLoadError(
                f"{source}: {key} needs the q, k and v projections, but "
                f"{', '.join(missing)} are missing"
            )
        remapped[key] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return remapped


def _rename(key: str, renames: tuple[tuple[str, str], ...]) -> str:
    matches = [(old, new) for old, new in renames if key.startswith(old)]
    if not matches:
        return key
    old, new = max(matches, key=lambda pair: len(pair[0]))
    return new + key[len(old) :]
