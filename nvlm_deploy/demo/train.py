"""Train the demo NVLM-D from scratch on the synthetic tasks, and write it as an NVLM-D checkpoint.

The model is the project's own `NvlmModel` built from the "demo" preset; prompts come from the
project's `Preprocessor`, so training sees exactly the inference layout (chatml, `<Image>`, tile
tags, image slots `vocab_size + k`). One step:

    tiles of all samples -> extract_feature -> one prompt table [sum(T_i) * tokens_per_tile, hidden]
    each sample's image slots offset by the image tokens of the samples before it
    embed -> right-padded batch -> Qwen2 -> cross-entropy on the answer tokens (+ <|im_end|>) only

Reproducible: the data of step s is a pure function of (seed, s) (tasks.make_sample), weights start
from `random_state_dict(config, seed)`, and torch runs with a fixed thread count.
"""

from __future__ import annotations

import json
import math
import shlex
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from nvlm_deploy.demo.tasks import make_sample, task_names
from nvlm_deploy.errors import DeployError


@dataclass(frozen=True)
class TrainSettings:
    seed: int = 0
    steps: int = 6000
    batch_size: int = 16
    lr: float = 1e-3
    warmup: int = 200
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    threads: int = 1
    preset: str = "demo"
    tasks: tuple[str, ...] = field(default_factory=lambda: tuple(task_names()))
    task_weights: tuple[int, ...] | None = None  # slots per task in each batch pattern; None: 1 each
    log_every: int = 100
    init: str | None = None  # a demo checkpoint to continue from instead of fresh weights

    def slot_pattern(self) -> list[str]:
        weights = self.task_weights or (1,) * len(self.tasks)
        if len(weights) != len(self.tasks) or min(weights) < 1:
            raise DeployError(f"task weights {weights} must be positive integers, one per task {self.tasks}.")
        pattern = [t for t, w in zip(self.tasks, weights) for _ in range(w)]
        if self.batch_size % len(pattern):
            raise DeployError(f"batch size {self.batch_size} must be a multiple of the task weights' sum "
                              f"{len(pattern)} (tasks {self.tasks}, weights {weights}).")
        return pattern

    def command(self, out: str | Path) -> str:
        """The CLI command that reproduces this run."""
        return shlex.join(["nvlm-deploy", "demo", "train", "--out", str(out), "--seed", str(self.seed),
                           "--steps", str(self.steps), "--batch-size", str(self.batch_size),
                           "--lr", str(self.lr), "--warmup", str(self.warmup), "--threads", str(self.threads),
                           "--preset", self.preset, "--tasks", ",".join(self.tasks)]
                          + (["--task-weights", ",".join(map(str, self.task_weights))] if self.task_weights else [])
                          + (["--init", self.init] if self.init else []))


@dataclass(frozen=True)
class Example:
    input_ids: list[int]  # prompt + answer + <|im_end|>; image slots vocab_size + k
    pixel_values: np.ndarray  # [T, 3, S, S]
    answer_start: int  # index of the first answer token in input_ids


@dataclass(frozen=True)
class Batch:
    input_ids: torch.Tensor  # [B, L] long; image slots offset into the batch's prompt table
    attention_mask: torch.Tensor  # [B, L] 1 for tokens, 0 for right padding
    labels: torch.Tensor  # [B, L] next-token targets (input_ids shifted left), -100 off the answer
    pixel_values: torch.Tensor  # [T_total, 3, S, S]


def encode_example(preprocessor, sample, *, with_answer: bool = True) -> Example:
    """Prompt ids (+ answer and <|im_end|>) of one sample through the project's Preprocessor."""
    prepared = preprocessor.prepare(sample.question, [sample.image])
    ids = list(prepared.input_ids)
    start = len(ids)
    if with_answer:
        tok = preprocessor.tokenizer
        ids += tok.encode(sample.answer) + [tok.eos_id]
    return Example(input_ids=ids, pixel_values=prepared.pixel_values, answer_start=start)


def offset_image_slots(ids: list[int], *, vocab_size: int, offset: int) -> list[int]:
    """Shift image slots (ids >= vocab_size) by `offset` rows of a batch-wide prompt table."""
    return [i + offset if i >= vocab_size else i for i in ids]


def collate(examples: list[Example], *, vocab_size: int, tokens_per_tile: int, pad_id: int) -> Batch:
    """Right-padded batch with one prompt table for all samples (see module docstring)."""
    length = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), length), dtype=torch.long)
    labels = torch.full((len(examples), length), -100, dtype=torch.long)
    offset = 0
    for b, e in enumerate(examples):
        row = torch.tensor(offset_image_slots(e.input_ids, vocab_size=vocab_size, offset=offset))
        ids[b, :len(row)] = row
        mask[b, :len(row)] = 1
        labels[b, e.answer_start - 1:len(row) - 1] = row[e.answer_start:]  # position t predicts t+1
        offset += len(e.pixel_values) * tokens_per_tile
    pixels = torch.from_numpy(np.concatenate([e.pixel_values for e in examples]))
    return Batch(input_ids=ids, attention_mask=mask, labels=labels, pixel_values=pixels)


def batch_logits(model, batch: Batch) -> torch.Tensor:
    """[B, L, vocab] logits of a collated batch."""
    return model.language_model(inputs_embeds=_embeds(model, batch), attention_mask=batch.attention_mask).logits


def _embeds(model, batch: Batch) -> torch.Tensor:
    feats = model.extract_feature(batch.pixel_values)  # [T_total, tokens_per_tile, hidden]
    return model.embed(batch.input_ids, feats.reshape(-1, feats.shape[-1]))  # [B, L, hidden]


def answer_loss_sum(model, batch: Batch) -> tuple[torch.Tensor, int]:
    """(summed cross-entropy over the answer tokens, their count); lm_head runs on those positions only."""
    lm = model.language_model
    hidden = lm.model(inputs_embeds=_embeds(model, batch), attention_mask=batch.attention_mask).last_hidden_state
    on_answer = batch.labels != -100  # [B, L]
    logits = lm.lm_head(hidden[on_answer])  # [N, vocab]
    loss = torch.nn.functional.cross_entropy(logits.float(), batch.labels[on_answer], reduction="sum")
    return loss, int(on_answer.sum())


def batch_loss(model, batches: list[Batch]) -> torch.Tensor:
    """Mean answer-token cross-entropy over sub-batches (each one padded separately)."""
    sums, count = zip(*(answer_loss_sum(model, b) for b in batches))
    return sum(sums) / sum(count)


def buckets(examples: list[Example]) -> list[list[Example]]:
    """Single-tile and multi-tile samples apart: each bucket pads little and keeps a fixed shape."""
    single = [e for e in examples if len(e.pixel_values) == 1]
    multi = [e for e in examples if len(e.pixel_values) > 1]
    return [b for b in (single, multi) if b]


def step_examples(preprocessor, settings: TrainSettings, step: int) -> list[Example]:
    """The batch of `step`: a slot pattern (each task repeated by its weight) tiles the batch.

    Task t fills `per_step[t]` slots per step; its k-th slot of step s takes its sample
    s * per_step[t] + k, so the data of a step depends on (seed, step) only.
    """
    pattern = settings.slot_pattern()
    reps = settings.batch_size // len(pattern)
    seen: dict[str, int] = {}
    out = []
    for j in range(settings.batch_size):
        task = pattern[j % len(pattern)]
        index = step * reps * pattern.count(task) + seen.get(task, 0)
        seen[task] = seen.get(task, 0) + 1
        out.append(encode_example(preprocessor, make_sample(task, split="train", seed=settings.seed, index=index)))
    return out


def lr_at(step: int, settings: TrainSettings) -> float:
    """Linear warmup, then cosine decay to 10% of the peak."""
    if step < settings.warmup:
        return settings.lr * (step + 1) / settings.warmup
    t = (step - settings.warmup) / max(1, settings.steps - settings.warmup)
    return settings.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * t)))


def build_model(settings: TrainSettings, config=None):
    """A fresh NvlmModel of the preset with the project's seeded NVLM-like initialization, or `settings.init`."""
    from nvlm_deploy.model.nvlm import NvlmModel
    from nvlm_deploy.model.tiny import preset_config, random_state_dict

    if settings.init:
        return NvlmModel.from_pretrained(settings.init, dtype="fp32")
    config = config or preset_config(settings.preset)
    model = NvlmModel(config)
    model.load_state_dict(random_state_dict(config, seed=settings.seed))
    return model


def make_optimizer(model, settings: TrainSettings) -> torch.optim.AdamW:
    """AdamW; matrices decay, vectors (norms, biases, layer scales) do not."""
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": settings.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=settings.lr, betas=(0.9, 0.98))


def train_step(model, opt: torch.optim.Optimizer, batches: list[Batch], *, lr: float, grad_clip: float) -> float:
    """One AdamW step under bf16 autocast; returns the loss."""
    for group in opt.param_groups:
        group["lr"] = lr
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = batch_loss(model, batches)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    return float(loss.detach())


def train(settings: TrainSettings, *, out: str | Path, force: bool = False, config=None, log=print) -> dict:
    """Train and write the checkpoint directory `out`; returns the training summary.

    Args:
        settings: hyperparameters, seed and tasks.
        out: checkpoint directory to create (NVLM-D layout + tokenizer + TRAINING.md + training.json).
        force: replace `out` if it exists.
        config: an NvlmConfig to use instead of the preset's (tests use a smaller one).
        log: where progress lines go.
    """
    from nvlm_deploy.preprocess.request import Preprocessor

    if Path(out).exists() and not force:
        raise DeployError(f"{out} already exists; pass --force to replace it, or choose another --out.")
    torch.manual_seed(settings.seed)
    torch.set_num_threads(settings.threads)
    model = build_model(settings, config).train()
    config = model.config
    tokenizer = build_tokenizer(config)
    preprocessor = Preprocessor(config, tokenizer)
    opt = make_optimizer(model, settings)
    history, start, window = [], time.monotonic(), []
    for step in range(settings.steps):
        batches = [collate(bucket, vocab_size=config.llm.vocab_size, tokens_per_tile=config.tokens_per_tile,
                           pad_id=tokenizer.pad_id) for bucket in buckets(step_examples(preprocessor, settings, step))]
        window.append(train_step(model, opt, batches, lr=lr_at(step, settings), grad_clip=settings.grad_clip))
        if (step + 1) % settings.log_every == 0 or step + 1 == settings.steps:
            elapsed = time.monotonic() - start
            history.append({"step": step + 1, "loss": sum(window) / len(window), "seconds": round(elapsed, 1)})
            log(f"step {step + 1}/{settings.steps}  loss {history[-1]['loss']:.4f}  {elapsed:.0f}s")
            window = []
    summary = {"settings": asdict(settings), "command": settings.command(out), "history": history,
               "wall_seconds": round(time.monotonic() - start, 1), "torch": torch.__version__}
    write_demo_checkpoint(model, out, summary=summary, force=force)
    return summary


def build_tokenizer(config):
    """The tokenizer the checkpoint will carry (write_tokenizer is deterministic)."""
    import tempfile

    from nvlm_deploy.preprocess.tokenizer import Tokenizer, write_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        write_tokenizer(tmp)
        tokenizer = Tokenizer.load(tmp)
    if len(tokenizer) > config.llm.vocab_size:
        raise DeployError(f"the tokenizer has {len(tokenizer)} tokens but vocab_size is {config.llm.vocab_size}.")
    return tokenizer


def write_demo_checkpoint(model, out: str | Path, *, summary: dict, force: bool = False) -> Path:
    """NVLM-D checkpoint (config.json, sharded safetensors + index, tokenizer) + TRAINING.md/training.json."""
    from nvlm_deploy.artifacts import atomic_output_dir
    from nvlm_deploy.model.tiny import write_tiny_checkpoint, zero_dummy_heads

    state = {name: t.detach().float().clone() for name, t in model.state_dict().items()}
    zero_dummy_heads(state, model.config)  # stay exact zeros (they get no gradient anyway)
    with atomic_output_dir(out, force=force) as tmp:
        write_tiny_checkpoint(tmp, state=state, config=model.config, force=True, max_shard_bytes=2 * 1024 * 1024)
        (tmp / "training.json").write_text(json.dumps(summary, indent=2))
        (tmp / "TRAINING.md").write_text(training_note(summary))
    return Path(out)


def training_note(summary: dict) -> str:
    s = summary["settings"]
    last = summary["history"][-1] if summary["history"] else {"loss": float("nan")}
    return (
        "# Demo NVLM-D: how this checkpoint was trained\n\n"
        f"Trained from scratch on the synthetic tasks {', '.join(s['tasks'])} "
        "(nvlm_deploy/demo/tasks.py), through the project's own NvlmModel and Preprocessor.\n\n"
        "```\n" + summary["command"] + "\n```\n\n"
        f"- seed {s['seed']}, {s['steps']} steps, batch {s['batch_size']}, AdamW lr {s['lr']} "
        f"(warmup {s['warmup']}, cosine to 10%), bf16 autocast, torch threads {s['threads']}\n"
        f"- wall time {summary['wall_seconds'] / 60:.1f} min (torch {summary['torch']}); "
        f"final training loss {last['loss']:.4f}\n"
        "- evaluation: `nvlm-deploy demo eval --model <this dir> --per-task 300 --json eval.json` "
        "(see eval.json)\n"
    )
