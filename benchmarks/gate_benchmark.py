"""Measure the gate's time and memory against a bare open_clip loop; write the report.

Usage::

    python benchmarks/gate_benchmark.py DATA_DIR [--out docs/benchmarks.md]

DATA_DIR is either a footwear-small folder (``styles.csv`` with id, articleType and
baseColour, and ``images/ID.jpg``) or a catalog folder with a ``manifest.csv`` such
as the repository's ``fixtures/footwear``. In one run the script measures:

a. a cold gate (``python -m pytest SUITE --model ... --modelqa-baseline ...
   --cache-clear`` in a subprocess) against a bare open_clip loop, also a
   subprocess, that encodes the same images and prompts with the same two models
   and batch size;
b. a warm gate (the same command without --cache-clear, so both models'
   embeddings come from the cache) against the cold gate;
c. gate time and the gate process's peak RSS for several catalog sizes;
d. images per second of a randomly initialised ViT-B-32 through the whole gate
   against the bare loop, on a subset of the images.

Each run records wall time and CPU time (user plus system, from wait4). CPU time
changes less than wall time when other processes share the machine. Every ratio
divides two figures of the same run. Work files go to a temporary folder, which is
removed at the end.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

# The repository's stand-in architecture: a 9M-parameter open_clip CLIP.
STANDIN_MODEL_CFG = {
    "embed_dim": 128,
    "vision_cfg": {
        "image_size": 64,
        "patch_size": 8,
        "width": 192,
        "layers": 4,
        "head_width": 64,
    },
    "text_cfg": {
        "context_length": 32,
        "vocab_size": 49408,
        "width": 128,
        "heads": 2,
        "layers": 4,
    },
}
STANDIN_PREPROCESS_CFG = {"size": 64, "resize_mode": "squash"}
VIT_PREPROCESS_CFG = {"size": 224, "resize_mode": "shortest"}
ATTRIBUTE_PROMPT = "{category} with {value} shoelace"
NONE_VALUE = "none"
CASE_COUNT = 3  # text cases: the most frequent category and attribute pairs
TARGET_COLD_RATIO = 1.15
TARGET_WARM_RATIO = 0.05
TARGET_LARGE_GATE_S = 300.0
# The gate's closing line about the embedding cache (plugin._cache_summary).
CACHE_LINE = re.compile(r"embedding cache .*: (\d+) embeddings read, (\d+) computed")

SUITE_YAML = """\
# Written by benchmarks/gate_benchmark.py: the shoelace suite's checks on a
# benchmark catalog.
name: bench-{size}
catalog: catalog
columns:
  category: category
  attribute: shoelace_colour
attribute:
  prompt: "{{category}} with {{value}} shoelace"
  none_value: none
  none_policy: exclude
classification:
  split: test
  top_k: 5
  checks:
    macro_f1: {{rule: better}}
    weighted_f1: {{rule: better}}
    zero_shot_accuracy: {{rule: better}}
    top_k_accuracy: {{rule: better}}
    rank_score: {{rule: better}}
retrieval:
  gallery_split: all
  min_matches: 5
  cases: cases/*.yaml
"""

PYTEST_INI = """\
[pytest]
# Random weights are at chance level by construction, so the plugin's baseline
# sanity check is switched off.
modelqa_check_baseline = false
"""


@dataclass
class Item:
    """One catalog row of the benchmark."""

    id: str
    image: Path
    category: str
    attribute: str
    split: str


@dataclass
class Run:
    """One timed subprocess."""

    label: str
    seconds: float
    cpu_seconds: float  # user plus system time of the process
    max_rss_mib: float
    returncode: int
    load: float  # 1-minute load average when the run started
    summary: str = ""
    cache: tuple[int, int] | None = None  # embeddings read and computed


# -- the bare loop ----------------------------------------------------------------


def bare_encode_images(model, preprocess, paths, batch_size: int):
    """Encode images with nothing but PIL, the transform and encode_image."""
    import torch
    from PIL import Image

    chunks = []
    with torch.inference_mode():
        for start in range(0, len(paths), batch_size):
            pixels = []
            for path in paths[start : start + batch_size]:
                with Image.open(path) as image:
                    pixels.append(preprocess(image.convert("RGB")))
            chunks.append(model.encode_image(torch.stack(pixels), normalize=True))
    return torch.cat(chunks)  # (N, D)


def bare_encode_texts(model, tokenizer, texts, batch_size: int = 256):
    import torch

    chunks = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            tokens = tokenizer(texts[start : start + batch_size])
            chunks.append(model.encode_text(tokens, normalize=True))
    return torch.cat(chunks)  # (T, D)


def run_bare_job(job_path: Path) -> None:
    """Load each checkpoint with open_clip alone; encode the job's images and texts."""
    import open_clip
    import torch

    job = json.loads(job_path.read_text())
    for checkpoint in job["checkpoints"]:
        payload = torch.load(checkpoint, map_location="cpu", weights_only=True)
        model = open_clip.CLIP(**payload["model_cfg"])
        model.load_state_dict(payload["state_dict"])
        model.eval()
        cfg = payload["preprocess_cfg"]
        preprocess = open_clip.image_transform(
            cfg["size"], is_train=False, resize_mode=cfg["resize_mode"]
        )
        context = payload["model_cfg"]["text_cfg"]["context_length"]
        tokenizer = open_clip.SimpleTokenizer(context_length=context)
        images = bare_encode_images(model, preprocess, job["images"], job["batch_size"])
        texts = bare_encode_texts(model, tokenizer, job["texts"])
        print(f"{checkpoint}: images {tuple(images.shape)}, texts {tuple(texts.shape)}")


# -- work files -------------------------------------------------------------------


def read_items(data_dir: Path) -> list[Item]:
    """Return the data folder's items that have an image, in a fixed shuffled order.

    From footwear-small, category is articleType and the attribute is the
    lower-cased baseColour, a placeholder because that data has no shoelace labels.
    The split is the id modulo 10: 0-6 train, 7 val, 8-9 test. From a manifest,
    the category, shoelace_colour and split columns are used as they are.
    """
    if (data_dir / "styles.csv").is_file():
        with open(data_dir / "styles.csv", newline="", encoding="utf-8") as handle:
            items = [
                Item(
                    id=row["id"],
                    image=(data_dir / "images" / f"{row['id']}.jpg").resolve(),
                    category=row["articleType"],
                    attribute=row["baseColour"].strip().lower() or NONE_VALUE,
                    split=split_of(row["id"]),
                )
                for row in csv.DictReader(handle)
            ]
    elif (data_dir / "manifest.csv").is_file():
        with open(data_dir / "manifest.csv", newline="", encoding="utf-8") as handle:
            items = [
                Item(
                    id=row["id"],
                    image=(data_dir / row["image"]).resolve(),
                    category=row["category"],
                    attribute=row["shoelace_colour"],
                    split=row["split"],
                )
                for row in csv.DictReader(handle)
            ]
    else:
        raise SystemExit(
            f"{data_dir} contains neither styles.csv nor manifest.csv; pass a "
            "footwear-small folder or a catalog folder such as fixtures/footwear"
        )
    items = [item for item in items if item.image.is_file()]
    items.sort(key=lambda item: int(item.id))
    random.Random(0).shuffle(items)
    return items


def split_of(item_id: str) -> str:
    remainder = int(item_id) % 10
    if remainder < 7:
        return "train"
    if remainder == 7:
        return "val"
    return "test"


def text_cases(items: list[Item]) -> list[tuple[str, str, str]]:
    """Return (id, category, attribute) of the most frequent labelled pairs."""
    pairs = Counter(
        (item.category, item.attribute)
        for item in items
        if item.attribute.strip().lower() != NONE_VALUE
    )
    ranked = sorted(pairs.items(), key=lambda pair: (-pair[1], pair[0]))
    return [
        (f"case-{number}", category, attribute)
        for number, ((category, attribute), _) in enumerate(ranked[:CASE_COUNT])
    ]


def write_gate_folder(folder: Path, items: list[Item]) -> dict:
    """Write a suite, its catalog manifest and pytest.ini into `folder`.

    Return what the bare loop needs: the image paths and the prompts that the gate
    encodes for this catalog.
    """
    cases = text_cases(items)
    catalog = folder / "suite" / "catalog"
    catalog.mkdir(parents=True)
    (folder / "suite" / "cases").mkdir()
    with open(catalog / "manifest.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "image", "category", "shoelace_colour", "split"])
        for item in items:
            writer.writerow(
                [item.id, str(item.image), item.category, item.attribute, item.split]
            )
    lines = ["cases:"]
    for case_id, category, attribute in cases:
        lines += [
            f"  - id: {case_id}",
            f"    text: {category} with {attribute} shoelace",
            f"    category: {category}",
            f"    attribute: {attribute}",
        ]
    (folder / "suite" / "cases" / "text.yaml").write_text("\n".join(lines) + "\n")
    (folder / "suite" / "modelqa-suite.yaml").write_text(
        SUITE_YAML.format(size=len(items))
    )
    (folder / "pytest.ini").write_text(PYTEST_INI)
    return {
        "images": [str(item.image) for item in items],
        "texts": gate_prompts(items, cases),
    }


def gate_prompts(items: list[Item], cases: list[tuple[str, str, str]]) -> list[str]:
    """Return the prompts the gate encodes: phase 1 prompts and the case texts."""
    from pytest_modelqa.catalog import normalise_label

    attributes = [normalise_label(item.attribute) or NONE_VALUE for item in items]
    classes = sorted(set(attributes) - {NONE_VALUE})
    categories = sorted(
        {
            normalise_label(item.category)
            for item, attribute in zip(items, attributes, strict=True)
            if item.split == "test" and attribute != NONE_VALUE
        }
    )
    prompts = [
        ATTRIBUTE_PROMPT.format(category=category, value=value)
        for category in categories
        for value in classes
    ]
    return prompts + [
        f"{category} with {value} shoelace" for _, category, value in cases
    ]


def write_checkpoints(folder: Path) -> tuple[Path, Path]:
    """Write the stand-in baseline (seed 0) and candidate (seed 1), random weights."""
    import torch

    from pytest_modelqa.models import build_model, save_checkpoint

    paths = []
    for role, seed in (("baseline", 0), ("candidate", 1)):
        torch.manual_seed(seed)
        payload = {
            "model_cfg": STANDIN_MODEL_CFG,
            "preprocess_cfg": STANDIN_PREPROCESS_CFG,
            "state_dict": build_model(STANDIN_MODEL_CFG).state_dict(),
            "role": role,
        }
        paths.append(save_checkpoint(folder / f"{role}.pt", payload))
    return paths[0], paths[1]


def write_vit_checkpoint(folder: Path) -> Path:
    """Write a randomly initialised ViT-B-32 (seed 0) as a trainer checkpoint."""
    import open_clip
    import torch

    from pytest_modelqa.models import build_model, save_checkpoint

    torch.manual_seed(0)
    model_cfg = open_clip.get_model_config("ViT-B-32")
    payload = {
        "model_cfg": model_cfg,
        "preprocess_cfg": VIT_PREPROCESS_CFG,
        "state_dict": build_model(model_cfg).state_dict(),
    }
    return save_checkpoint(folder / "vit-b-32.pt", payload)


# -- timing -----------------------------------------------------------------------


def child_env() -> dict[str, str]:
    """Return the environment of every child: this checkout first on the path, no CI.

    CI is removed so that the gate draws its progress bars, as on a developer's
    machine, into the log.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        part for part in (str(REPO_ROOT), env.get("PYTHONPATH")) if part
    )
    env.pop("CI", None)
    # Python writes bytecode by default, and pytest then caches its rewrite of the
    # plugin's modules; without either, every gate compiles them again.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def peak_rss_kib(pid: int) -> int:
    """Return a running process's peak resident set size (VmHWM), 0 once it ended.

    VmHWM belongs to the process's own address space. ru_maxrss from wait4 is not
    used, because Linux carries it over from the parent across fork and exec, so
    every child would report at least this script's own peak.
    """
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def timed(label: str, command: list[str], cwd: Path, log: Path) -> Run:
    """Run a command; return its wall time, CPU time (from wait4) and peak RSS.

    The peak RSS is sampled every 0.1 s, so a peak shorter than that can be missed.
    """
    load = os.getloadavg()[0]
    with open(log, "w+", encoding="utf-8") as output:
        start = time.perf_counter()
        process = subprocess.Popen(
            command, cwd=cwd, stdout=output, stderr=subprocess.STDOUT, env=child_env()
        )
        peak_kib = 0
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            peak_kib = max(peak_kib, peak_rss_kib(process.pid))
            time.sleep(0.1)
        seconds = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
        output.seek(0)
        text = output.read()
    lines = text.splitlines()
    summary = lines[-1].strip("= ") if lines else ""
    cache = None
    found = CACHE_LINE.findall(text)
    if found:
        cache = (int(found[-1][0]), int(found[-1][1]))
    run = Run(
        label,
        seconds,
        usage.ru_utime + usage.ru_stime,
        peak_kib / 1024,
        process.returncode,
        load,
        summary,
        cache,
    )
    print(
        f"  {label}: {seconds:.1f} s wall, {run.cpu_seconds:.1f} s CPU, "
        f"{run.max_rss_mib:.0f} MiB, load {load:.2f}, cache {cache}, {summary}",
        flush=True,
    )
    return run


def run_gate(
    folder: Path, mode: str, models: tuple[Path, Path], batch_size: int, label: str
) -> Run:
    """Run the gate on a folder's suite; `mode` is cold, warm or disabled (no cache)."""
    baseline, candidate = models
    command = [
        sys.executable,
        "-m",
        "pytest",
        "suite",
        "-q",
        "--model",
        str(candidate),
        "--modelqa-baseline",
        str(baseline),
        "--modelqa-batch-size",
        str(batch_size),
    ]
    command += {
        "cold": ["--cache-clear"],
        "warm": [],
        "disabled": ["--modelqa-no-cache"],
    }[mode]
    log = folder / f"{mode}.log"
    run = timed(label, command, folder, log)
    # Exit code 1 only means that checks failed, as they do for random models.
    if run.returncode not in (0, 1):
        tail = log.read_text()[-3000:]
        raise RuntimeError(f"{label} failed with exit code {run.returncode}:\n{tail}")
    return run


def run_bare(
    folder: Path, job: dict, checkpoints: list[Path], batch_size: int, label: str
) -> Run:
    job_file = folder / "bare-job.json"
    job_file.write_text(
        json.dumps(
            {
                **job,
                "checkpoints": [str(path) for path in checkpoints],
                "batch_size": batch_size,
            }
        )
    )
    script = str(Path(__file__).resolve())
    command = [sys.executable, script, "--bare-loop", str(job_file)]
    log = folder / "bare.log"
    run = timed(label, command, folder, log)
    if run.returncode != 0:
        raise RuntimeError(f"{label} failed:\n{log.read_text()[-3000:]}")
    return run


# -- the machine ------------------------------------------------------------------


def describe_machine() -> dict:
    import open_clip
    import torch

    cpu = "unknown"
    with open("/proc/cpuinfo", encoding="utf-8") as handle:
        for line in handle:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory_kib = 0
    with open("/proc/meminfo", encoding="utf-8") as handle:
        for line in handle:
            if line.startswith("MemTotal:"):
                memory_kib = int(line.split()[1])
    return {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)),
        "memory_gib": memory_kib / 1024**2,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "open_clip": open_clip.__version__,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": _git_commit(),
    }


def _git_commit() -> str:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{commit} (with uncommitted changes)" if dirty else commit


# -- the report -------------------------------------------------------------------


def target_status(met: bool) -> str:
    return "met" if met else "**missed**"


def ratio_status(wall: float, cpu: float, target: float) -> str:
    """Judge a ratio in wall time and in CPU time, which load changes less."""
    if (wall <= target) == (cpu <= target):
        return target_status(wall <= target)
    kept = "wall" if wall <= target else "CPU"
    return f"met in {kept} time only, **missed** in the other"


class Figures:
    """Medians of the runs, by label."""

    def __init__(self, runs: dict[str, list[Run]]):
        self.runs = runs

    def wall(self, label: str) -> float:
        return statistics.median(run.seconds for run in self.runs[label])

    def cpu(self, label: str) -> float:
        return statistics.median(run.cpu_seconds for run in self.runs[label])

    def rss(self, label: str) -> float:
        return max(run.max_rss_mib for run in self.runs[label])

    def loads(self, label: str) -> str:
        return ", ".join(f"{run.load:.1f}" for run in self.runs[label])


def render_report(results: dict) -> str:
    """Return docs/benchmarks.md as Markdown."""
    machine, options = results["machine"], results["options"]
    figures = Figures(results["runs"])
    sizes, ratio_sizes = options["sizes"], options["ratio_sizes"]
    lines = [
        "# Benchmarks",
        "",
        "Gate time and memory, written by `benchmarks/gate_benchmark.py` in one run on "
        f"the machine below ({results['total_minutes']:.0f} minutes). "
        + (
            "Each figure is a single run"
            if options["repeats"] == 1
            else f"Each figure is the median of {options['repeats']} runs"
        )
        + ", and each ratio divides two figures of this run.",
        "",
        *load_note(results),
        "",
        *targets_table(results, figures),
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
        f"| CPU | {machine['cpu']}, {machine['cores']} cores available |",
        f"| memory | {machine['memory_gib']:.1f} GiB |",
        f"| software | Python {machine['python']}, torch {machine['torch']} "
        f"({machine['torch_threads']} threads), open_clip {machine['open_clip']} |",
        f"| date | {machine['date']} |",
        f"| commit | {machine['commit']} |",
        f"| command | `{results['command']}` |",
        "",
        "## Set-up",
        "",
        "- Models: the stand-in architecture (open_clip CLIP, embed_dim 128; vision "
        "64 px, patch 8, width 192, 4 layers; text context 32, width 128, 4 layers; "
        "preprocessing 64 px squash) with random weights, seed 0 for the baseline and "
        "seed 1 for the candidate, saved with `save_checkpoint`.",
        f"- Catalogs: the first N items of a seeded shuffle of {results['data']}, so "
        "each catalog contains the smaller ones. " + results["data_note"],
        "- Suite: the shoelace suite's five phase 1 checks (top_k 5) and retrieval "
        f"over the whole catalog with {CASE_COUNT} text cases (the most frequent "
        "category and attribute pairs). It has no general "
        "benchmarks, because their fixed catalogs would hide how time grows with N.",
        "- Gate: `python -m pytest suite -q --model candidate.pt --modelqa-baseline "
        f"baseline.pt --modelqa-batch-size {options['batch_size']}` in a subprocess "
        "with 0 loader workers (the default). Cold adds `--cache-clear`, so the "
        "embedding cache starts empty and is filled. Warm is the same command again, "
        "so every embedding comes from the cache. No cache adds `--modelqa-no-cache`.",
        "- Bare loop: a subprocess of this script that loads each checkpoint with "
        "`torch.load` and `open_clip.CLIP`, decodes every image with PIL, applies "
        "`open_clip.image_transform`, runs `encode_image` in batches of the same size "
        "and encodes the gate's prompts, for both models. That is the work every gate "
        "must do.",
        "- Start-up: `python -c 'import torch, open_clip, pytest, "
        "pytest_modelqa.plugin'`, the fixed cost of any gate process, took "
        f"{figures.wall('start-up'):.1f} s wall and {figures.cpu('start-up'):.1f} s "
        "CPU.",
        "- Every child runs with this checkout first on PYTHONPATH, without CI, and "
        "with bytecode caching on (PYTHONDONTWRITEBYTECODE removed), as Python runs "
        "by default. An untimed `--collect-only` gate before the first run fills "
        "the caches of compiled and assertion-rewritten modules.",
        "- CPU time is user plus system time of the child process, from `os.wait4`. "
        "Peak RSS is the child's VmHWM from `/proc/PID/status`, sampled every 0.1 s.",
        "",
        "## a. Cold gate against the bare loop",
        "",
        "| images | bare loop | cold gate | no cache | ratio cold / bare | "
        "ratio in CPU time | load average at the starts |",
        "|---:|---:|---:|---:|---:|---:|---|",
    ]
    for size in ratio_sizes:
        bare, cold = f"bare {size}", f"cold {size}"
        disabled = f"no cache {size}"
        no_cache = (
            f"{figures.wall(disabled):.1f} s" if disabled in figures.runs else "-"
        )
        lines.append(
            f"| {size:,} | {figures.wall(bare):.1f} s | {figures.wall(cold):.1f} s | "
            f"{no_cache} | {figures.wall(cold) / figures.wall(bare):.3f} | "
            f"{figures.cpu(cold) / figures.cpu(bare):.3f} | "
            f"{figures.loads(bare)} / {figures.loads(cold)} |"
        )
    lines += [
        "",
        "## b. Warm gate against the cold gate",
        "",
        "| images | cold gate | warm gate | ratio warm / cold | ratio in CPU time | "
        "embeddings read / computed when warm |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for size in sizes:
        cold, warm = f"cold {size}", f"warm {size}"
        counts = ", ".join(
            f"{run.cache[0]} / {run.cache[1]}" for run in figures.runs[warm]
        )
        lines.append(
            f"| {size:,} | {figures.wall(cold):.1f} s | {figures.wall(warm):.1f} s | "
            f"{figures.wall(warm) / figures.wall(cold):.3f} | "
            f"{figures.cpu(warm) / figures.cpu(cold):.3f} | {counts} |"
        )
    lines += [
        "",
        "## c. Time and memory by catalog size",
        "",
        "| images | cold gate | CPU time | CPU per 1,000 images | warm gate | "
        "peak RSS cold | peak RSS warm |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for size in sizes:
        cold = f"cold {size}"
        lines.append(
            f"| {size:,} | {figures.wall(cold):.1f} s | {figures.cpu(cold):.1f} s | "
            f"{figures.cpu(cold) / size * 1000:.1f} s | "
            f"{figures.wall(f'warm {size}'):.1f} s | {figures.rss(cold):.0f} MiB | "
            f"{figures.rss(f'warm {size}'):.0f} MiB |"
        )
    lines += ["", *growth_lines(sizes, figures)]
    lines += vit_lines(options["vit_images"], figures)
    lines += [
        "",
        "## All runs",
        "",
        "| run | wall | CPU | peak RSS | load at start | cache read / computed | "
        "pytest summary |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for label, group in figures.runs.items():
        for run in group:
            cache = f"{run.cache[0]} / {run.cache[1]}" if run.cache else "-"
            lines.append(
                f"| {label} | {run.seconds:.1f} s | {run.cpu_seconds:.1f} s | "
                f"{run.max_rss_mib:.0f} MiB | {run.load:.2f} | {cache} | "
                f"{run.summary} |"
            )
    return "\n".join(lines) + "\n"


def vit_lines(vit_images: int, figures: Figures) -> list[str]:
    if "vit gate" not in figures.runs:
        return []
    lines = [
        "",
        "## d. ViT-B-32 through the gate",
        "",
        "open_clip's ViT-B-32 config with random weights (seed 0, 224 px, 151M "
        f"parameters), saved as a trainer checkpoint, on the first {vit_images} "
        "images. The gate gets it as both baseline and candidate, so it encodes each "
        "image once, and the bare loop encodes each image once. Images per second "
        "count the whole process: start-up, loading the model, the images and the "
        "prompts.",
        "",
        "| path | wall time | images/s | CPU time | images per CPU second |",
        "|---|---:|---:|---:|---:|",
    ]
    for label in ("vit bare", "vit gate"):
        wall, cpu = figures.wall(label), figures.cpu(label)
        name = "bare loop" if label == "vit bare" else "cold gate"
        lines.append(
            f"| {name} | {wall:.1f} s | {vit_images / wall:.2f} | {cpu:.1f} s | "
            f"{vit_images / cpu:.2f} |"
        )
    return lines


def load_note(results: dict) -> list[str]:
    """State how busy the machine was, from the load averages of the runs."""
    loads = [run.load for group in results["runs"].values() for run in group]
    cores = results["machine"]["cores"]
    if max(loads) < 0.5 * cores:
        return [
            f"The 1-minute load average stayed below {0.5 * cores:.1f} at the start "
            "of every run, so the machine was close to idle."
        ]
    return [
        f"Other jobs shared the CPU: the 1-minute load average at the start of the "
        f"runs ranged from {min(loads):.1f} to {max(loads):.1f} on {cores} cores. "
        "Wall times are therefore longer than on an idle machine and vary from run "
        "to run; the ratios of CPU time, and ratios of runs that started at a "
        "similar load, are the figures to compare."
    ]


def targets_table(results: dict, figures: Figures) -> list[str]:
    """Summarise the four measurements against their targets."""
    sizes, ratio_sizes = results["options"]["sizes"], results["options"]["ratio_sizes"]
    lines = [
        "| measurement | result | target | |",
        "|---|---|---|---|",
    ]
    for size in ratio_sizes:
        wall = figures.wall(f"cold {size}") / figures.wall(f"bare {size}")
        cpu = figures.cpu(f"cold {size}") / figures.cpu(f"bare {size}")
        lines.append(
            f"| a. cold gate / bare loop, {size:,} images | {wall:.3f} wall, "
            f"{cpu:.3f} CPU | ≤ {TARGET_COLD_RATIO} | "
            f"{ratio_status(wall, cpu, TARGET_COLD_RATIO)} |"
        )
    for size in sizes:
        wall = figures.wall(f"warm {size}") / figures.wall(f"cold {size}")
        cpu = figures.cpu(f"warm {size}") / figures.cpu(f"cold {size}")
        lines.append(
            f"| b. warm gate / cold gate, {size:,} images | {wall:.3f} wall, "
            f"{cpu:.3f} CPU | ≤ {TARGET_WARM_RATIO} | "
            f"{ratio_status(wall, cpu, TARGET_WARM_RATIO)} |"
        )
    largest = max(sizes)
    large_s = figures.wall(f"cold {largest}")
    worst = growth_deviation(sizes, figures)
    lines.append(
        f"| c. cold gate time over {', '.join(f'{n:,}' for n in sizes)} images | "
        f"each point within {worst:.1%} of a straight line in CPU time | "
        "linear growth | see section c |"
    )
    lines.append(
        f"| c. cold gate, {largest:,} images | {large_s:.0f} s wall, "
        f"{figures.cpu(f'cold {largest}'):.0f} s CPU | < {TARGET_LARGE_GATE_S:.0f} s "
        f"| {target_status(large_s < TARGET_LARGE_GATE_S)} |"
    )
    if "vit gate" not in figures.runs:
        return lines
    vit_wall = figures.wall("vit bare") / figures.wall("vit gate")
    vit_cpu = figures.cpu("vit bare") / figures.cpu("vit gate")
    lines.append(
        f"| d. ViT-B-32 images/s, gate / bare loop | {vit_wall:.3f} wall, "
        f"{vit_cpu:.3f} CPU | near 1 | see section d |"
    )
    return lines


def growth_deviation(sizes: list[int], figures: Figures) -> float:
    """Return the largest relative distance of a cold CPU time from its line fit."""
    if len(sizes) < 3:
        return 0.0
    times = [figures.cpu(f"cold {size}") for size in sizes]
    slope, intercept = statistics.linear_regression(sizes, times)
    return max(
        abs(t - (slope * n + intercept)) / t for n, t in zip(sizes, times, strict=True)
    )


def growth_lines(sizes: list[int], figures: Figures) -> list[str]:
    """Describe how cold time and memory grow with the catalog, by least squares."""
    if len(sizes) < 2:
        return []
    cpu = [figures.cpu(f"cold {size}") for size in sizes]
    slope, intercept = statistics.linear_regression(sizes, cpu)
    wall = [figures.wall(f"cold {size}") for size in sizes]
    wall_slope, wall_intercept = statistics.linear_regression(sizes, wall)
    memory = [figures.rss(f"cold {size}") for size in sizes]
    memory_slope, memory_intercept = statistics.linear_regression(sizes, memory)
    return [
        f"Least-squares lines through the cold gates: CPU time {intercept:.1f} s + "
        f"{slope * 1000:.1f} s per 1,000 images, each point within "
        f"{growth_deviation(sizes, figures):.1%} of the line; wall time "
        f"{wall_intercept:.1f} s + {wall_slope * 1000:.1f} s per 1,000 images. Peak "
        f"RSS grows by {memory_slope * 1000:.1f} MiB per 1,000 images from "
        f"{memory_intercept:.0f} MiB.",
    ]


# -- main -------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "data_dir",
        nargs="?",
        type=Path,
        help="Folder with styles.csv and images/ID.jpg, or with a manifest.csv.",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO_ROOT / "docs" / "benchmarks.md",
        help="Markdown report to write. Default: docs/benchmarks.md.",
    )
    parser.add_argument(
        "--sizes",
        default="600,2603,9222",
        help="Catalog sizes in images, comma-separated. Default: 600,2603,9222.",
    )
    parser.add_argument(
        "--ratio-sizes",
        default="600,2603",
        help="Sizes also timed with the bare loop. Default: 600,2603.",
    )
    parser.add_argument(
        "--no-cache-sizes",
        default="600",
        help="Sizes also timed with --modelqa-no-cache. Default: 600.",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="Runs per figure; the median is reported. Default: 1.",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=64,
        help="Images per batch in every path. Default: 64.",
    )
    parser.add_argument(
        "--vit-images",
        type=int,
        default=128,
        help="Images for the ViT-B-32 throughput; 0 skips it. Default: 128.",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="Keep the temporary work folder and print its path.",
    )
    parser.add_argument("--bare-loop", type=Path, metavar="JOB", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.bare_loop is None and args.data_dir is None:
        parser.error("DATA_DIR is required")
    return args


def sizes_of(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def measure(args: argparse.Namespace, work: Path) -> dict:
    sizes = sorted(sizes_of(args.sizes))
    ratio_sizes = [size for size in sizes_of(args.ratio_sizes) if size in sizes]
    no_cache_sizes = [size for size in sizes_of(args.no_cache_sizes) if size in sizes]
    items = read_items(args.data_dir)
    if max(sizes) > len(items):
        raise SystemExit(
            f"{args.data_dir} has {len(items)} images; --sizes asks for {max(sizes)}"
        )
    models = write_checkpoints(work)
    folders, jobs = {}, {}
    for size in sizes:
        folders[size] = work / f"gate-{size}"
        jobs[size] = write_gate_folder(folders[size], items[:size])
    if args.vit_images:
        vit_folder = work / "gate-vit"
        vit_job = write_gate_folder(vit_folder, items[: args.vit_images])
        vit = write_vit_checkpoint(work)
    # Warm-up, untimed: image files into the page cache, modules compiled and loaded.
    for image in jobs[max(sizes)]["images"]:
        Path(image).read_bytes()
    startup = [sys.executable, "-c", "import torch, open_clip, pytest_modelqa.plugin"]
    subprocess.run(startup, check=True, env=child_env())
    smallest = folders[sizes[0]]
    subprocess.run(
        [sys.executable, "-m", "pytest", "suite", "--collect-only", "-q"],
        cwd=smallest,
        check=True,
        stdout=subprocess.DEVNULL,
        env=child_env(),
    )
    runs: dict[str, list[Run]] = {}
    batch = args.batch_size

    def record(label: str, run: Run) -> None:
        runs.setdefault(label, []).append(run)

    for repeat in range(args.repeats):
        print(f"repeat {repeat + 1} of {args.repeats}", flush=True)
        record("start-up", timed("start-up", startup, work, work / "startup.log"))
        if args.vit_images:
            label = "vit bare"
            record(label, run_bare(vit_folder, vit_job, [vit], batch, label))
            label = "vit gate"
            record(label, run_gate(vit_folder, "cold", (vit, vit), batch, label))
        for size in sizes:
            folder = folders[size]
            if size in ratio_sizes:
                label = f"bare {size}"
                record(label, run_bare(folder, jobs[size], list(models), batch, label))
            for mode in ("cold", "warm"):
                label = f"{mode} {size}"
                record(label, run_gate(folder, mode, models, batch, label))
            if size in no_cache_sizes:
                label = f"no cache {size}"
                record(label, run_gate(folder, "disabled", models, batch, label))
    check_cache_counts(runs, sizes)
    return {
        "runs": runs,
        "options": {
            "sizes": sizes,
            "ratio_sizes": ratio_sizes,
            "repeats": args.repeats,
            "batch_size": args.batch_size,
            "vit_images": args.vit_images,
        },
    }


def check_cache_counts(runs: dict[str, list[Run]], sizes: list[int]) -> None:
    """Raise when a cold gate read the cache or a warm one computed anything."""
    for size in sizes:
        for run in runs[f"cold {size}"]:
            if run.cache is None or run.cache[0] != 0:
                raise RuntimeError(f"cold gate of {size} images read the cache: {run}")
        for run in runs[f"warm {size}"]:
            if run.cache is None or run.cache[1] != 0:
                raise RuntimeError(f"warm gate of {size} images computed: {run}")


def describe_data(data_dir: Path) -> tuple[str, str]:
    if (data_dir / "styles.csv").is_file():
        return (
            f"footwear-small (`{data_dir.name}`: 60x80 px JPEG photos)",
            "category is articleType. That data has no shoelace labels, so the "
            "attribute column holds the lower-cased baseColour as a placeholder. The "
            "split is the id modulo 10: 0-6 train, 7 val, 8-9 test.",
        )
    return (
        f"the catalog `{data_dir.name}`",
        "Its category, shoelace_colour and split columns are used as they are.",
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.bare_loop is not None:
        run_bare_job(args.bare_loop)
        return
    started = time.perf_counter()
    machine = describe_machine()
    print(json.dumps(machine), flush=True)
    work = Path(tempfile.mkdtemp(prefix="modelqa-benchmark-"))
    try:
        results = measure(args, work)
    finally:
        if args.keep:
            print(f"work files kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    results["machine"] = machine
    results["total_minutes"] = (time.perf_counter() - started) / 60
    results["data"], results["data_note"] = describe_data(args.data_dir)
    # The data folder's path is local to this machine, so the command names it.
    given = [str(arg) for arg in (argv or sys.argv[1:])]
    options = [arg for arg in given if arg != str(args.data_dir)]
    results["command"] = " ".join(
        ["python", "benchmarks/gate_benchmark.py", "DATA_DIR", *options]
    )
    report = render_report(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report, encoding="utf-8")
    print(textwrap.indent(report, "  "))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
