"""The CPU `tensorrt_llm` model's work: tensorrtllm_backend's tensors over `TrtllmCheckpointRuntime`.

Same tensor names and semantics as the C++ backend (shared/reference/triton.md §3): `input_ids`,
`input_lengths`, `request_output_len`, `end_id`, `pad_id`, `runtime_top_k`, `runtime_top_p`,
`temperature`, `seed`, `streaming`, `exclude_input_in_output`, `prompt_embedding_table`,
`prompt_vocab_size` in; `output_ids` [1, beam=1, n] and `sequence_length` [1, 1] out. Streaming
sends each new token in its own response; otherwise one response holds the prompt (unless
excluded) followed by the generated tokens. In Triton, requests join and leave the running batch
between decoding steps (backend.llm_scheduler); `run` generates one batch to its end.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nvlm_deploy.backend import request_inputs as rq
from nvlm_deploy.backend.request_inputs import RequestError
from nvlm_deploy.errors import DeployError


@dataclass(frozen=True)
class LlmRequest:
    generation: object  # runtime.decoder.GenerationRequest
    streaming: bool
    exclude_input: bool


# emit(request_index, outputs): output_ids [1, beam=1, n] int32, sequence_length [1, 1] int32, and with
# return_log_probs cum_log_probs [1, 1] and output_log_probs [1, 1, n] float32 (tensorrtllm_backend's)
Emit = Callable[[int, dict[str, np.ndarray]], None]


def output_tensors(tokens: Sequence[int], log_probs: Sequence[float] | None, cum_log_prob: float | None = None, *,
             generated: int) -> dict[str, np.ndarray]:
    """The tensors of one response; log-probs are zeros unless the request asked for them (the ensemble
    maps these outputs, so every response carries them)."""
    values = [0.0] * generated if log_probs is None else list(log_probs)
    cum = sum(values) if cum_log_prob is None else cum_log_prob
    return {"output_ids": np.asarray(tokens, dtype=np.int32).reshape(1, 1, -1),
            "sequence_length": np.array([[len(tokens)]], dtype=np.int32),
            "cum_log_probs": np.array([[cum]], np.float32),  # [batch, beam]
            "output_log_probs": np.asarray(values, dtype=np.float32).reshape(1, 1, -1)}  # [batch, beam, n]


def word_lists(array: np.ndarray | None) -> list[list[int]]:
    """tensorrtllm_backend's stop_words_list / bad_words_list INT32 [1, 2, L] (or [2, L]): row 0 every word's
    ids joined, row 1 each word's end offset, padded with -1 -> the words' id lists."""
    if array is None or np.asarray(array).size == 0:
        return []
    data = np.asarray(array).reshape(2, -1) if np.asarray(array).ndim != 3 else np.asarray(array)[0]
    ids, ends = data[0].tolist(), [int(e) for e in data[1].tolist() if e >= 0]
    if ends != sorted(ends) or (ends and ends[-1] > len(ids)):
        raise RequestError(f"a word list's offsets {ends} do not fit its {len(ids)} ids.")
    return [ids[start:end] for start, end in zip([0, *ends], ends) if end > start]


class LlmHandler:
    """Args: runtime: a TrtllmCheckpointRuntime; max_input_len / max_output_len: the engine's limits."""

    def __init__(self, runtime, *, max_input_len: int, max_output_len: int, normalize_log_probs: bool = False,
                 max_prompt_rows: int | None = None):
        self.runtime = runtime
        self.max_input_len = max_input_len
        self.max_output_len = max_output_len
        self.max_prompt_rows = max_prompt_rows  # prompt-table rows one request may bring (limits); None: any
        self.normalize_log_probs = normalize_log_probs

    @classmethod
    def from_parameters(cls, root: Path, params: Mapping[str, str]) -> "LlmHandler":
        from nvlm_deploy.runtime.decoder import TrtllmCheckpointRuntime

        runtime = TrtllmCheckpointRuntime.load(root / params["checkpoint_dir"], dtype=params["compute_precision"])
        threads = decoder_threads(int(params.get("threads", "0")), runtime.hidden_size)
        if threads:
            import torch

            torch.set_num_threads(threads)  # this model's stub process only
        limits = rq.repository_limits(root)
        return cls(runtime, max_input_len=limits.max_input_len, max_output_len=limits.max_output_len,
                   max_prompt_rows=limits.prompt_table_rows_per_request)

    def parse(self, inputs: Mapping[str, np.ndarray | None]) -> LlmRequest:
        """One request's tensors -> LlmRequest; RequestError on anything the engine would reject."""
        from nvlm_deploy.runtime.decoder import GenerationRequest

        ids = inputs.get("input_ids")
        if ids is None or np.asarray(ids).size == 0:
            raise RequestError("input_ids is empty.")
        ids = np.asarray(ids).reshape(-1)
        length = int(rq.first(inputs.get("input_lengths"), ids.size))
        if not 1 <= length <= ids.size:
            raise RequestError(f"input_lengths {length} does not fit input_ids' {ids.size} ids: send the number of "
                               "ids of the prompt (1 to its length).")
        ids = [int(i) for i in ids[:length]]
        if len(ids) > self.max_input_len:
            raise RequestError(f"input_lengths {len(ids)} exceeds max_input_len {self.max_input_len}.")
        out_len = int(rq.first(inputs.get("request_output_len"), 0))
        if out_len < 1 or out_len > self.max_output_len:
            raise RequestError(f"request_output_len {out_len} must be between 1 and {self.max_output_len}.")
        table = inputs.get("prompt_embedding_table")
        vocab = int(rq.first(inputs.get("prompt_vocab_size"), 0))
        if self.max_prompt_rows is not None and vocab > self.max_prompt_rows:
            raise RequestError(f"prompt_vocab_size {vocab} exceeds the {self.max_prompt_rows} prompt-table rows one "
                               "request may bring (max_images x tiles x tokens per tile): send fewer images or tiles.")
        if table is not None and vocab > 0:
            table = np.asarray(table, dtype=np.float32)
            if table.size % self.runtime.hidden_size or table.size // self.runtime.hidden_size < vocab:
                raise RequestError(f"prompt_embedding_table {list(table.shape)} does not hold prompt_vocab_size {vocab} "
                                   f"rows of hidden size {self.runtime.hidden_size}.")
        table = None if table is None or vocab == 0 else table.reshape(-1, self.runtime.hidden_size)[:vocab]
        for name in ("return_context_logits", "return_generation_logits"):
            if rq.first(inputs.get(name), False):
                raise RequestError(f"{name}: this engine does not gather logits (built without "
                                   "--gather_context_logits / --gather_generation_logits); send false.")
        try:
            generation = GenerationRequest(
                input_ids=ids, prompt_table=table, max_new_tokens=out_len,
                end_id=_token_id(rq.first(inputs.get("end_id"))), pad_id=_token_id(rq.first(inputs.get("pad_id"))),
                **sampling_fields(inputs), stop_words=word_lists(inputs.get("stop_words_list")),
                return_log_probs=bool(rq.first(inputs.get("return_log_probs"), False)))
            self.runtime.check(generation)  # out-of-range values are this request's error, before the batch runs
        except RequestError:
            raise
        except DeployError as exc:
            raise RequestError(str(exc)) from None
        return LlmRequest(generation=generation, streaming=bool(rq.first(inputs.get("streaming"), False)),
                          exclude_input=bool(rq.first(inputs.get("exclude_input_in_output"), False)))

    def run(self, batch: Sequence[LlmRequest], emit: Emit) -> None:
        """Generate the batch together; emit() each streamed token, or each whole output at the end."""
        def on_token(k: int, token: int, log_prob: float | None) -> None:
            if batch[k].streaming:
                emit(k, output_tensors([token], None if log_prob is None else [log_prob], generated=1))

        results = self.runtime.generate_results([r.generation for r in batch], on_token=on_token,
                                                normalize_log_probs=self.normalize_log_probs)
        for k, (req, result) in enumerate(zip(batch, results)):
            if not req.streaming:
                prefix = [] if req.exclude_input else list(req.generation.input_ids)
                emit(k, output_tensors(prefix + list(result.tokens), result.output_log_probs, result.cum_log_probs,
                                 generated=len(result.tokens)))


SMALL_DECODER_HIDDEN = 1024


def decoder_threads(requested: int, hidden_size: int) -> int | None:
    """Intra-op threads for the decoder: `requested` when > 0; else 1 for a decoder narrower than
    SMALL_DECODER_HIDDEN, None (torch's default) for a wider one.

    Why: a small decoder's matmuls are too short to split, and on a loaded machine OpenMP workers that
    wait for each other make every step slower (demo model, 2 shared cores: 3-6 ms per step with one
    thread, 30-120 ms with two).
    """
    if requested > 0:
        return requested
    return 1 if hidden_size < SMALL_DECODER_HIDDEN else None


def sampling_fields(inputs: Mapping[str, np.ndarray | None]) -> dict[str, object]:
    """tensorrtllm_backend's sampling tensors -> `SamplingParams` fields (TensorRT-LLM's defaults where absent)."""
    seed = rq.first(inputs.get("seed"))
    return dict(temperature=float(rq.first(inputs.get("temperature"), 1.0)),
                top_k=int(rq.first(inputs.get("runtime_top_k"), 0)),
                top_p=float(rq.first(inputs.get("runtime_top_p"), 0.0)), seed=None if seed is None else int(seed),
                repetition_penalty=float(rq.first(inputs.get("repetition_penalty"), 1.0)),
                presence_penalty=float(rq.first(inputs.get("presence_penalty"), 0.0)),
                frequency_penalty=float(rq.first(inputs.get("frequency_penalty"), 0.0)),
                min_tokens=int(rq.first(inputs.get("min_tokens"), 1)),
                length_penalty=float(rq.first(inputs.get("len_penalty"), 0.0)),
                beam_width=int(rq.first(inputs.get("beam_width"), 1)),
                num_return_sequences=_opt_int(rq.first(inputs.get("num_return_sequences"))),
                bad_words=word_lists(inputs.get("bad_words_list")))


def check_sampling(inputs: Mapping[str, np.ndarray | None]) -> None:
    """RequestError for sampling settings tensorrt_llm would refuse: the BLS asks before generating, so that
    such a request never opens a stream that ends at once (the same checks `parse` applies)."""
    from nvlm_deploy.runtime.sampling_params import SamplingParams

    try:
        SamplingParams(**sampling_fields(inputs))
    except RequestError:
        raise
    except (DeployError, ValueError, TypeError, OverflowError) as exc:
        raise RequestError(str(exc)) from None


def _token_id(value) -> int | None:
    """end_id / pad_id: -1 (or absent) is none; any other value is a token id, checked by the runtime."""
    return None if value is None or int(value) == -1 else int(value)


def _opt_int(value) -> int | None:
    return None if value is None or int(value) < 0 else int(value)
