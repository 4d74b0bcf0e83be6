"""Planted candidates on a tiny CLIP: the gate must pass, and only pass, a real gain.

The baseline is a tiny open_clip model trained for a few steps on the suite's own
attribute captions ("casual shoes with white shoelace"). Three candidates go through
one gate session:

- the baseline itself, which must fail every ``better`` check;
- the baseline with Gaussian noise added to its weights, which must be rejected;
- the baseline trained further on the same captions, which is clearly better on this
  test set and must pass every check.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import open_clip
import pandas as pd
import pytest
import torch
from conftest import TINY_MODEL_CFG, TINY_PREPROCESS_CFG, copy_catalog_sample
from PIL import Image

from pytest_modelqa.models import build_model, build_preprocess, save_checkpoint

BASELINE_STEPS = 30  # enough for some colour skill, which the noise then destroys
FURTHER_STEPS = 80
NOISE_SCALE = 0.5  # noise std as a fraction of each weight tensor's own std

SUITE = """\
name: planted
catalog: catalog
columns: {category: category, attribute: shoelace_colour}
attribute:
  prompt: "{category} with {value} shoelace"
  none_policy: exclude
classification:
  split: test
  top_k: 3
  checks:
    macro_f1: {rule: better}
    weighted_f1: {rule: better}
    zero_shot_accuracy: {rule: better}
    top_k_accuracy: {rule: better}
    rank_score: {rule: better}
    per_class_f1: {rule: non_inferior, tolerance: 0.2}
retrieval:
  gallery_split: all
  min_matches: 2
  cases: cases.yaml
"""

CASES = """\
cases:
  - {id: casual-white, text: casual shoes with white shoelace,
     category: Casual Shoes, attribute: white}
  - {id: sports-white, text: sports shoes with white shoelace,
     category: Sports Shoes, attribute: white}
  - {id: casual-black, text: casual shoes with black shoelace,
     category: Casual Shoes, attribute: black}
  - {id: formal-black, text: formal shoes with black shoelace,
     category: Formal Shoes, attribute: black}
"""

BETTER_CHECKS = [
    "macro_f1",
    "weighted_f1",
    "zero_shot_accuracy",
    "top_1_accuracy",
    "top_2_accuracy",
    "top_3_accuracy",
    "rank_score",
    "method_1",
    "method_2",
    "method_3",
    "method_4",
]


def caption(row) -> str:
    if row.shoelace_colour == "none":
        return row.category.lower()
    return f"{row.category.lower()} with {row.shoelace_colour} shoelace"


def train(model, images: torch.Tensor, tokens: torch.Tensor, *, steps: int, seed: int):
    """Train with open_clip's contrastive loss on random batches of 64 pairs."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    loss_fn = open_clip.ClipLoss()
    model.train()
    for _ in range(steps):
        batch = torch.randperm(len(images), generator=generator)[:64]
        image_features, text_features, logit_scale = model(
            images[batch], tokens[batch]
        )[:3]
        loss = loss_fn(image_features, text_features, logit_scale)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


def with_noise(state_dict: dict, *, scale: float, seed: int) -> dict:
    generator = torch.Generator().manual_seed(seed)
    noisy = {}
    for name, tensor in state_dict.items():
        if tensor.is_floating_point() and tensor.numel() > 1:
            noise = torch.randn(tensor.shape, generator=generator)
            tensor = tensor + scale * tensor.std() * noise
        noisy[name] = tensor
    return noisy


def write(path: Path, state_dict: dict) -> Path:
    return save_checkpoint(
        path,
        {
            "model_cfg": TINY_MODEL_CFG,
            "preprocess_cfg": TINY_PREPROCESS_CFG,
            "state_dict": state_dict,
        },
    )


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> dict[str, Path]:
    """Write the suite's catalog and the baseline, noisy and better checkpoints."""
    root = tmp_path_factory.mktemp("planted")
    catalog = copy_catalog_sample(
        "footwear", root / "catalog", per_split={"train": 20, "val": 5, "test": 60}
    )
    frame = pd.read_csv(catalog / "manifest.csv", dtype=str, keep_default_na=False)
    preprocess = build_preprocess(TINY_PREPROCESS_CFG, image_size=32)
    images = torch.stack(
        [preprocess(Image.open(catalog / path).convert("RGB")) for path in frame.image]
    )  # (N, 3, 32, 32)
    tokenizer = open_clip.SimpleTokenizer(context_length=16)
    tokens = tokenizer([caption(row) for row in frame.itertuples()])  # (N, 16)

    # One thread: on a shared CPU, several threads make these tiny steps far slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model = build_model(TINY_MODEL_CFG)
        train(model, images, tokens, steps=BASELINE_STEPS, seed=0)
        baseline = {k: v.detach().clone() for k, v in model.state_dict().items()}
        train(model, images, tokens, steps=FURTHER_STEPS, seed=1)
        better = model.state_dict()
    finally:
        torch.set_num_threads(threads)
    return {
        "catalog": catalog,
        "base": write(root / "base.pt", baseline),
        "noisy": write(root / "noisy.pt", with_noise(baseline, scale=NOISE_SCALE, seed=1)),
        "better": write(root / "better.pt", better),
    }


def run_gate(pytester: pytest.Pytester, planted: dict[str, Path]):
    """Gate the three candidates in one session against the baseline."""
    suite = pytester.path / "planted"
    suite.mkdir()
    shutil.copytree(planted["catalog"], suite / "catalog")
    (suite / "modelqa-suite.yaml").write_text(SUITE)
    (suite / "cases.yaml").write_text(CASES)
    # The baseline is trained on purpose for only a few steps, so the sanity check
    # that it beats chance is switched off.
    return pytester.runpytest(
        "-p",
        "no:cacheprovider",
        "-o",
        "modelqa_check_baseline=false",
        str(suite),
        "--model",
        str(planted["base"]),
        "--model",
        str(planted["noisy"]),
        "--model",
        str(planted["better"]),
        "--modelqa-baseline",
        str(planted["base"]),
        "-rfE",
    )


def failed_checks(result, label: str) -> set[str]:
    """Return the checks that the short summary lists as failed for a candidate."""
    failed = set()
    for line in result.stdout.lines:
        if line.startswith("FAILED ") and f"[{label}]" in line:
            name = line.split("::", 1)[1].split("[", 1)[0]
            failed.add(name.removeprefix("retrieval_"))
    return failed


def test_planted_candidates(pytester, planted):
    result = run_gate(pytester, planted)
    assert result.ret == pytest.ExitCode.TESTS_FAILED

    # The baseline as its own candidate: every better check fails, and the
    # per-class rule (no class loses more than 0.2 F1) passes.
    assert failed_checks(result, "base") == set(BETTER_CHECKS)
    result.stdout.fnmatch_lines(["base: REJECTED, 1/12 checks passed*"])

    # Noise on the weights: rejected, on every check.
    assert failed_checks(result, "noisy") == {*BETTER_CHECKS, "per_class_f1"}
    result.stdout.fnmatch_lines(["noisy: REJECTED, 0/12 checks passed*"])

    # Further training on the suite's captions: passes everything and wins.
    assert failed_checks(result, "better") == set()
    result.stdout.fnmatch_lines(["better: ACCEPTABLE (winner), 12/12 checks passed*"])

    # Each failure names the observed value, baseline, rule, interval and p-value.
    result.stdout.fnmatch_lines(
        [
            "zero_shot_accuracy FAILED for noisy: observed *, baseline *, delta -*; "
            "rule better: candidate > baseline (needs > *); McNemar exact: 95% "
            "interval of the difference [[]*, *[]], one-sided p-value *",
            "rank_score FAILED for noisy: observed *, baseline *, delta -*; rule "
            "better: candidate > baseline (needs > *); paired bootstrap: 95% "
            "interval of the difference [[]*, *[]], one-sided p-value *",
            "per_class_f1 (class *) FAILED for noisy: observed *, baseline *, delta -*;"
            " rule non_inferior: candidate >= baseline - 0.2 (needs >= *); paired "
            "bootstrap: 95% interval of the difference [[]*, *[]], one-sided p-value *",
            "class * is nearest the rule's bound; classes breaking the rule: *",
            "F1 delta per class: *",
        ]
    )
