"""Calibration requests: real NVLM-D prompts, with images whose slots carry the vision encoder's outputs.

A request is what the decoder sees in deployment: token ids where ids >= vocab_size index rows of
the request's prompt table ([image tokens, hidden], from the project's reference vision encoder +
projector), or a text-only prompt with no table. Two sources:

- `demo` (default): the demo task generator (`nvlm_deploy.demo.tasks`) on its "train" split with
  CALIB_SEED, so `eval`'s held-out "eval" split never overlaps it. Every third request is text-only.
- a folder: images (*.png, *.jpg, *.jpeg) and `prompts.txt` (one prompt per line); image k goes
  with prompt k mod len(prompts), and every prompt is also used once without an image.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from nvlm_deploy.errors import DeployError

CALIB_SEED = 1234  # the demo generator seed of calibration data; eval uses another split and seed
DEMO = "demo"
PROMPTS_FILE = "prompts.txt"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass(frozen=True)
class CalibRequest:
    input_ids: list[int]
    prompt_table: torch.Tensor | None  # [image tokens, hidden] or None (text-only)


def calibration_prompts(spec: str, *, size: int) -> list[tuple[str, list]]:
    """(prompt, images) pairs from `spec` ("demo" or a folder); raises for an empty or missing set."""
    if size < 1:
        raise DeployError(f"--calib-size must be at least 1, got {size}.")
    if spec == DEMO:
        return _demo_prompts(size)
    return _folder_prompts(Path(spec), size)


def _demo_prompts(size: int) -> list[tuple[str, list]]:
    from nvlm_deploy.demo.tasks import make_sample, task_names

    names = task_names()
    out = []
    for i in range(size):
        sample = make_sample(names[i % len(names)], split="train", seed=CALIB_SEED, index=i)
        out.append((sample.question, [] if i % 3 == 2 else [sample.image]))
    return out


def _folder_prompts(folder: Path, size: int) -> list[tuple[str, list]]:
    fix = (f"--calib takes '{DEMO}' or a folder with images ({', '.join(IMAGE_SUFFIXES)}) and a {PROMPTS_FILE} "
           "of one prompt per line")
    if not folder.is_dir():
        raise DeployError(f"calibration set {folder} does not exist or is not a folder; {fix}.")
    prompts_path = folder / PROMPTS_FILE
    prompts = [line.strip() for line in prompts_path.read_text(encoding="utf-8").splitlines()
               if line.strip()] if prompts_path.is_file() else []
    if not prompts:
        raise DeployError(f"calibration set {folder} has no prompts ({prompts_path} is missing or empty); {fix}.")
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    pairs = [(prompts[k % len(prompts)], [p]) for k, p in enumerate(images)] + [(p, []) for p in prompts]
    return pairs[:size]


@torch.no_grad()
def calibration_requests(model, preprocessor, spec: str, *, size: int) -> list[CalibRequest]:
    """Tokenized requests with their prompt tables, from the reference model's vision encoder.

    Args:
        model: the NvlmModel (vision encoder + projector used for the tables).
        preprocessor: the model's Preprocessor (tiling, tile tags, image slots).
        spec: "demo" or a folder (module docstring).
        size: number of requests.
    """
    from nvlm_deploy.progress import progress

    requests = []
    for prompt, images in progress(calibration_prompts(spec, size=size), desc="calibration requests", unit="req"):
        prepared = preprocessor.prepare(prompt, images)
        table = None
        if prepared.num_image_tokens:
            pixels = torch.as_tensor(prepared.pixel_values).to(model.mlp1[1].weight.dtype)
            feats = model.extract_feature(pixels)
            table = feats.reshape(-1, feats.shape[-1])  # [T * tokens_per_tile, hidden]
        requests.append(CalibRequest(list(prepared.input_ids), table))
    return requests


def forward_loop(model, requests: list[CalibRequest]):
    """modelopt's forward_loop: each request through the decoder alone (lengths differ; no padding)."""
    from nvlm_deploy.progress import progress

    def loop(language_model):
        for req in progress(requests, desc="calibrate", unit="req"):
            ids = torch.tensor([req.input_ids])
            language_model(inputs_embeds=model.embed(ids, req.prompt_table))
    return loop
