"""Ask the shipped demo NVLM-D a question about an image (reference path: ReferencePipeline).

The checkpoint `nvlm-d-demo/` beside this file was trained by `nvlm-deploy demo train` (its
TRAINING.md has the exact command). The bundled samples in `samples/` are drawn by the task
generators (split "sample"), so `write_samples` regenerates them bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from nvlm_deploy.errors import DeployError

HERE = Path(__file__).parent
SHIPPED_MODEL = HERE / "nvlm-d-demo"
SAMPLES_DIR = HERE / "samples"


@dataclass(frozen=True)
class BundledSample:
    file: str
    task: str
    index: int  # sample index of the task's "sample" split (seed 0)


# The first one is the default of `nvlm-deploy demo`: a wide image that dynamic tiling cuts into
# 3 tiles + thumbnail, whose answer is visible only in the tiles.
SAMPLES = (
    BundledSample("striped_wide.png", "striped", 1),
    BundledSample("shape.png", "shape", 0),
    BundledSample("count.png", "count", 0),
)


def default_model_dir(model_dir: str | Path | None = None) -> Path:
    """`model_dir`, or the shipped checkpoint; checked to hold a config.json."""
    path = Path(model_dir) if model_dir is not None else SHIPPED_MODEL
    if not (path / "config.json").is_file():
        hint = ("the shipped demo checkpoint is missing from this install; train one with "
                "`nvlm-deploy demo train --out DIR` and pass --model DIR") if model_dir is None else \
               "pass a directory written by `nvlm-deploy demo train`"
        raise DeployError(f"{path} has no config.json: {hint}.")
    return path


def sample_path(file: str | None = None) -> Path:
    """Path of a bundled sample image (default: the first, the tiling task's wide image)."""
    file = file or SAMPLES[0].file
    return SAMPLES_DIR / file


def sample_question(image: str | Path) -> str:
    """The task question that fits a bundled sample; for any other image, the default sample's question."""
    from nvlm_deploy.demo.tasks import TASKS

    by_file = {s.file: s.task for s in SAMPLES}
    return TASKS[by_file.get(Path(image).name, SAMPLES[0].task)].question


def write_samples(out_dir: str | Path = SAMPLES_DIR) -> list[Path]:
    """Draw the bundled sample images with the task generators and save them as PNG."""
    from nvlm_deploy.demo.tasks import make_sample

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for s in SAMPLES:
        make_sample(s.task, split="sample", seed=0, index=s.index).image.save(out / s.file, optimize=True)
        paths.append(out / s.file)
    return paths


def ask(question: str, images: Sequence, *, model_dir: str | Path | None = None, max_new_tokens: int = 16) -> str:
    """Answer `question` about `images` with the demo checkpoint, through ReferencePipeline.

    Args:
        question: the user's text.
        images: paths, bytes or PIL images (usually one).
        model_dir: a demo checkpoint (None: the shipped one).
        max_new_tokens: answer length bound.
    """
    from nvlm_deploy.model.generate import ReferencePipeline

    pipeline = ReferencePipeline.from_model_dir(default_model_dir(model_dir))
    return pipeline.generate(question, list(images), max_new_tokens=max_new_tokens)
