"""What quantization costs: quantized TensorRT-LLM checkpoints against the unquantized model, same prompts.

Prompts are the demo task generator's held-out "eval" split (seed EVAL_SEED), never the
calibration data (its "train" split, calibration.CALIB_SEED). For every prompt the reference
(the float32 NvlmModel, the numerical truth) answers greedily; then, teacher-forced on the
reference's answer, every next-token distribution of each quantized checkpoint (run by the CPU
runtime, which executes the stored format) is compared with the reference's:

- top-1 agreement: the argmax tokens are equal (every position: after the prompt and after each answer token);
- KL: mean KL(reference || quantized) of those distributions, in nats;
- greedy exact match: the checkpoint's own greedy answer equals the reference's, token for token;
- task accuracy: its greedy answer equals the task's true answer (the demo model's accuracy per task).

Vision features come from the reference encoder for every row (the vision tower is not quantized).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

EVAL_SEED = 0  # demo "eval" split seed (demo eval's default); calibration uses split "train", seed 1234
MAX_ANSWER_TOKENS = 4


@dataclass
class Prompt:
    task: str
    answer: str  # the task's true answer
    input_ids: list[int]
    table: torch.Tensor | None  # [image tokens, hidden]
    ref_tokens: list[int] = field(default_factory=list)  # reference greedy answer (end_id excluded)
    ref_logprobs: torch.Tensor | None = None  # [n + 1, vocab] teacher-forced reference log-probs


@dataclass
class Score:
    positions: int = 0
    agree: int = 0
    kl_sum: float = 0.0
    exact: int = 0
    prompts: int = 0
    correct: dict[str, list[int]] = field(default_factory=dict)  # task -> [correct, total]

    def as_dict(self) -> dict:
        return {"top1_agreement": round(self.agree / self.positions, 5), "mean_kl": self.kl_sum / self.positions,
                "greedy_exact_match": round(self.exact / self.prompts, 5), "positions": self.positions,
                "prompts": self.prompts,
                "task_accuracy": {t: round(c / n, 4) for t, (c, n) in self.correct.items()},
                "task_counts": {t: f"{c}/{n}" for t, (c, n) in self.correct.items()}}


@torch.no_grad()
def build_prompts(model, preprocessor, *, tasks, per_task: int, seed: int = EVAL_SEED) -> list[Prompt]:
    """Held-out prompts with the reference's greedy answers and teacher-forced log-probs."""
    from nvlm_deploy.demo.tasks import make_sample, task_names
    from nvlm_deploy.model.generate import greedy_generate
    from nvlm_deploy.progress import progress

    eos = preprocessor.tokenizer.eos_id
    prompts = []
    items = [(t, i) for t in task_names(tasks) for i in range(per_task)]
    for task, i in progress(items, desc="reference", unit="prompt"):
        sample = make_sample(task, split="eval", seed=seed, index=i)
        prepared = preprocessor.prepare(sample.question, [sample.image])
        feats = model.extract_feature(torch.as_tensor(prepared.pixel_values).float())
        p = Prompt(task, sample.answer, list(prepared.input_ids), feats.reshape(-1, feats.shape[-1]))
        p.ref_tokens = greedy_generate(model, p.input_ids, p.table, max_new_tokens=MAX_ANSWER_TOKENS, end_id=eos)
        logits = model(torch.tensor([p.input_ids + p.ref_tokens]), p.table)[0].float()  # [L + n, V]
        p.ref_logprobs = torch.log_softmax(logits[len(p.input_ids) - 1:], dim=-1)  # [n + 1, V]
        prompts.append(p)
    return prompts


@torch.no_grad()
def score_checkpoint(runtime, prompts: list[Prompt], *, tokenizer, desc: str = "eval") -> Score:
    """Compare one quantized checkpoint (a TrtllmCheckpointRuntime) with the reference on every prompt."""
    from nvlm_deploy.progress import progress
    from nvlm_deploy.runtime.decoder import GenerationRequest

    score = Score()
    for p in progress(prompts, desc=desc, unit="prompt"):
        logprobs = torch.log_softmax(_teacher_forced_logits(runtime, p), dim=-1)  # [n + 1, V]
        score.positions += logprobs.shape[0]
        score.agree += int((logprobs.argmax(-1) == p.ref_logprobs.argmax(-1)).sum())
        score.kl_sum += float((p.ref_logprobs.exp() * (p.ref_logprobs - logprobs)).sum())
        request = GenerationRequest(p.input_ids, prompt_table=None if p.table is None else p.table.numpy(),
                                    max_new_tokens=MAX_ANSWER_TOKENS, end_id=tokenizer.eos_id)
        tokens = runtime.generate([request])[0]
        score.prompts += 1
        score.exact += int(tokens == p.ref_tokens)
        correct = score.correct.setdefault(p.task, [0, 0])
        correct[0] += int(tokenizer.decode(tokens).strip() == p.answer)
        correct[1] += 1
    return score


def _teacher_forced_logits(runtime, p: Prompt) -> torch.Tensor:
    """[n + 1, V]: after the prompt, then after each reference answer token (the decode path, with the KV cache)."""
    n = len(p.input_ids)
    cache = runtime.new_cache(1, n + len(p.ref_tokens))
    h = runtime.embed(torch.tensor([p.input_ids]), p.table).to(runtime.dtype)
    rows = [runtime.forward(h, torch.arange(n)[None], cache)[0]]
    for j, token in enumerate(p.ref_tokens):
        h = runtime.embed(torch.tensor([[token]]), None).to(runtime.dtype)
        rows.append(runtime.forward(h, torch.tensor([[n + j]]), cache)[0])
    return torch.stack(rows).float()


def reference_accuracy(prompts: list[Prompt], *, tokenizer) -> dict[str, float]:
    out: dict[str, list[int]] = {}
    for p in prompts:
        c = out.setdefault(p.task, [0, 0])
        c[0] += int(tokenizer.decode(p.ref_tokens).strip() == p.answer)
        c[1] += 1
    return {t: round(c / n, 4) for t, (c, n) in out.items()}


def markdown(report: dict) -> str:
    tasks = list(report["reference"]["task_accuracy"])
    head = "| checkpoint | recipe | top-1 agreement | mean KL (nats) | greedy exact match | " + \
        " | ".join(f"{t} acc. (drop)" for t in tasks) + " |"
    lines = [f"{report['per_task']} held-out prompts per task (demo generator, split eval, seed {report['seed']}); "
             f"reference: {report['model']}", "", head, "|" + "---|" * 2 + "---:|" * (3 + len(tasks))]
    ref = report["reference"]["task_accuracy"]
    lines.append("| reference (float32) | none | 100 % | 0 | 100 % | " +
                 " | ".join(f"{100 * ref[t]:.1f} %" for t in tasks) + " |")
    for row in report["checkpoints"]:
        acc = row["task_accuracy"]
        lines.append(f"| {row['name']} | {row['recipe']} | {100 * row['top1_agreement']:.2f} % | {row['mean_kl']:.2e} | "
                     f"{100 * row['greedy_exact_match']:.1f} % | " +
                     " | ".join(f"{100 * acc[t]:.1f} % ({100 * (ref[t] - acc[t]):+.1f})" for t in tasks) + " |")
    return "\n".join(lines)


def bar_chart(report: dict, path: str | Path) -> None:
    """PNG: task accuracy per task (groups) per recipe (bars), drawn with PIL (no plotting library needed)."""
    from PIL import Image, ImageDraw

    series = [("reference", report["reference"]["task_accuracy"])] + \
        [(row["name"], row["task_accuracy"]) for row in report["checkpoints"]]
    tasks = list(series[0][1])
    colors = [(90, 90, 90), (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189)]
    bar, gap, left, top, height = 22, 30, 60, 40, 300
    width = left + len(tasks) * (len(series) * bar + gap) + 200
    img = Image.new("RGB", (width, top + height + 60), "white")
    d = ImageDraw.Draw(img)
    d.text((left, 10), "task accuracy per recipe (held-out demo prompts)", fill="black")
    for pct in range(0, 101, 20):
        y = top + height - pct * height // 100
        d.line((left - 5, y, width - 200, y), fill=(220, 220, 220))
        d.text((10, y - 6), f"{pct} %", fill="black")
    for ti, task in enumerate(tasks):
        x0 = left + ti * (len(series) * bar + gap)
        for si, (_, acc) in enumerate(series):
            h = int(acc[task] * height)
            x = x0 + si * bar
            d.rectangle((x, top + height - h, x + bar - 3, top + height), fill=colors[si % len(colors)])
        d.text((x0, top + height + 8), task, fill="black")
    for si, (name, _) in enumerate(series):
        y = top + 20 * si
        d.rectangle((width - 190, y, width - 178, y + 12), fill=colors[si % len(colors)])
        d.text((width - 172, y), name[:26], fill="black")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def evaluate(model_dir: str | Path, targets: list[str | Path], *, tasks=None, per_task: int = 300,
             seed: int = EVAL_SEED, command: str = "") -> dict:
    """The JSON-ready report of every target against the reference model.

    Args:
        model_dir: the unquantized HF NVLM-D checkpoint.
        targets: target directories (or trtllm_checkpoint/ directories) of quantized checkpoints.
        tasks: demo task names (None: all).
        per_task: held-out prompts per task.
        seed: the eval split's seed.
        command: the command line, recorded in the report.
    """
    from nvlm_deploy.model.nvlm import NvlmModel
    from nvlm_deploy.preprocess.request import Preprocessor
    from nvlm_deploy.runtime.decoder import TrtllmCheckpointRuntime

    model = NvlmModel.from_pretrained(model_dir, dtype="fp32")
    preprocessor = Preprocessor.from_model_dir(model_dir)
    prompts = build_prompts(model, preprocessor, tasks=tasks, per_task=per_task, seed=seed)
    rows = []
    for target in targets:
        runtime = TrtllmCheckpointRuntime.load(target)
        q = runtime.config.quantization
        recipe = _recipe_name(target) or q.quant_algo or "none"
        score = score_checkpoint(runtime, prompts, tokenizer=preprocessor.tokenizer, desc=f"eval {Path(target).name}")
        rows.append({"name": Path(target).name, "target": str(target), "recipe": recipe,
                     "quant_algo": q.quant_algo, "kv_cache_quant_algo": q.kv_cache_quant_algo,
                     "group_size": q.group_size if q.pre_quant_scale else None, **score.as_dict()})
    return {"model": str(model_dir), "split": "eval", "seed": seed, "per_task": per_task, "command": command,
            "metrics": {"top1_agreement": "argmax equal, teacher-forced on the reference's greedy answer",
                        "mean_kl": "KL(reference || checkpoint), nats, same positions",
                        "greedy_exact_match": "the checkpoint's greedy answer equals the reference's"},
            "reference": {"task_accuracy": reference_accuracy(prompts, tokenizer=preprocessor.tokenizer)},
            "checkpoints": rows}


def _recipe_name(target) -> str | None:
    """The recipe recorded in the checkpoint's manifest by `nvlm-deploy quantize` (int4_rtn and int4_awq share a layout)."""
    for directory in (Path(target) / "trtllm_checkpoint", Path(target)):
        path = directory / "manifest.json"
        if path.is_file():
            quant = json.loads(path.read_text(encoding="utf-8")).get("quantization") or {}
            if quant.get("recipe"):
                return quant["recipe"] + (" + fp8 kv" if quant.get("kv_cache") == "fp8" else "")
    return None
