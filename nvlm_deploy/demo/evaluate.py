"""Held-out accuracy of a demo checkpoint, per task: greedy exact match with the reference model.

Evaluation samples come from the "eval" split (tasks.make_sample), which never shares a random
stream with training. Prompts go through the project's Preprocessor; `ablate_tiles` prepares
every image as a single tile (max_tiles=1: the whole image squeezed to one tile, which is the
thumbnail, and no `<tile_k>` tags), so a task that needs the tiles should fall to chance.

Decoding is greedy on the reference NvlmModel. Prompts of equal length run as one batch (no
padding, so each row computes exactly what a single request would); answers are a few tokens.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch

from nvlm_deploy.demo.tasks import make_sample, task_names
from nvlm_deploy.demo.train import Example, encode_example, offset_image_slots

MAX_ANSWER_TOKENS = 4  # every answer is one word


@dataclass(frozen=True)
class Scored:
    task: str
    answer: str
    prediction: str
    chance: float  # 1 / number of answers possible for this image


def load_for_eval(model_dir: str | Path, *, ablate_tiles: bool = False, dtype: str = "fp32"):
    """(model, preprocessor) of a checkpoint; `ablate_tiles` limits every image to one tile."""
    from nvlm_deploy.model.nvlm import NvlmModel
    from nvlm_deploy.preprocess.request import Preprocessor

    model = NvlmModel.from_pretrained(model_dir, dtype=dtype)
    preprocessor = Preprocessor.from_model_dir(model_dir, max_tiles=1 if ablate_tiles else None)
    return model, preprocessor


@torch.no_grad()
def greedy_batch(model, examples: list[Example], *, tokens_per_tile: int, end_id: int,
                 max_new_tokens: int = MAX_ANSWER_TOKENS) -> list[list[int]]:
    """Greedy continuations of equal-length prompts, run as one batch; end_id excluded."""
    vocab = model.vocab_size
    rows, offset = [], 0
    for e in examples:
        rows.append(offset_image_slots(e.input_ids, vocab_size=vocab, offset=offset))
        offset += len(e.pixel_values) * tokens_per_tile
    pixels = torch.cat([torch.from_numpy(e.pixel_values) for e in examples])
    feats = model.extract_feature(pixels.to(model.mlp1[1].weight.dtype))
    table = feats.reshape(-1, feats.shape[-1])  # [sum T_i * tokens_per_tile, hidden]
    ids = torch.tensor(rows)  # [B, L]
    out = [[] for _ in examples]
    done = [False] * len(examples)
    for _ in range(max_new_tokens):
        next_ids = model(ids, table)[:, -1].float().argmax(-1)  # [B]
        for b, token in enumerate(next_ids.tolist()):
            if not done[b]:
                done[b] = token == end_id
                if not done[b]:
                    out[b].append(token)
        if all(done):
            break
        ids = torch.cat([ids, next_ids[:, None]], dim=1)
    return out


def evaluate(model_dir: str | Path, *, tasks: list[str] | str | None = None, per_task: int = 300,
             seed: int = 0, ablate_tiles: bool = False, batch_size: int = 64, threads: int | None = None) -> dict:
    """Accuracy per task on `per_task` held-out images each; returns the JSON-ready report.

    Args:
        model_dir: a demo checkpoint.
        tasks: task names (None: all).
        per_task: images per task.
        seed: seed of the evaluation split.
        ablate_tiles: prepare every image as one tile (thumbnail only, no tile tags).
        batch_size: prompts per forward pass.
        threads: torch CPU threads (None: leave torch's default).
    """
    from nvlm_deploy.progress import progress

    if threads:
        torch.set_num_threads(threads)
    model, preprocessor = load_for_eval(model_dir, ablate_tiles=ablate_tiles)
    tokenizer = preprocessor.tokenizer
    names = task_names(tasks)
    groups: dict[int, list[tuple[Example, object, str]]] = defaultdict(list)
    for task in names:
        for i in range(per_task):
            sample = make_sample(task, split="eval", seed=seed, index=i)
            example = encode_example(preprocessor, sample, with_answer=False)
            groups[len(example.input_ids)].append((example, sample, task))
    chunks = [items[i:i + batch_size] for items in groups.values() for i in range(0, len(items), batch_size)]
    scored = []
    for chunk in progress(chunks, desc="demo eval", unit="batch"):
        outs = greedy_batch(model, [c[0] for c in chunk], tokens_per_tile=model.config.tokens_per_tile,
                            end_id=tokenizer.eos_id)
        for (_, sample, task), ids in zip(chunk, outs):
            scored.append(Scored(task, sample.answer, tokenizer.decode(ids).strip(), 1 / len(sample.options)))
    return report(scored, names=names, model_dir=model_dir, per_task=per_task, seed=seed, ablate_tiles=ablate_tiles)


def report(scored: list[Scored], *, names: list[str], model_dir, per_task: int, seed: int, ablate_tiles: bool) -> dict:
    tasks = {}
    for task in names:
        rows = [s for s in scored if s.task == task]
        correct = sum(s.prediction == s.answer for s in rows)
        confusions = defaultdict(int)
        for s in rows:
            if s.prediction != s.answer:
                confusions[f"{s.answer} -> {s.prediction}"] += 1
        tasks[task] = {"correct": correct, "total": len(rows), "accuracy": round(correct / len(rows), 4),
                       "chance": round(sum(s.chance for s in rows) / len(rows), 4),
                       "top_errors": dict(sorted(confusions.items(), key=lambda kv: -kv[1])[:5])}
    return {"model": str(model_dir), "split": "eval", "seed": seed, "per_task": per_task,
            "ablate_tiles": ablate_tiles, "decoding": "greedy, reference NvlmModel (float32)", "tasks": tasks}


def markdown_table(result: dict) -> str:
    title = "thumbnail only, no tile tags" if result["ablate_tiles"] else "full NVLM-D prompt (tiles + tags)"
    lines = [f"held-out exact match, {result['per_task']} images per task, {title}", "",
             "| task | correct | accuracy | chance |", "|---|---:|---:|---:|"]
    for task, r in result["tasks"].items():
        lines.append(f"| {task} | {r['correct']}/{r['total']} | {100 * r['accuracy']:.1f} % | "
                     f"{100 * r['chance']:.1f} % |")
    return "\n".join(lines)


def write_json(result: dict, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(result, indent=2) + "\n")
