"""The CPU `tensorrt_llm` model's work: tensorrtllm_backend's tensors over `TrtllmCheckpointRuntime`.

Same tensor names and semantics as the C++ backend (shared/reference/triton.md §3): `input_ids`,
`input_lengths`, `request_output_len`, `end_id`, `pad_id`, `runtime_top_k`, `runtime_top_p`,
`temperature`, `seed`, `streaming`, `exclude_input_in_output`, `prompt_embedding_table`,
`prompt_vocab_size` in; `output_ids` [1, beam=1, n] and `sequence_length` [1, 1] out. Streaming
sends each new token in its own response; otherwise one response holds the prompt (unless
excluded) followed by the generated tokens. Requests that arrive together are generated together.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nvlm_deploy.backend import request_inputs as rq
from nvlm_deploy.backend.request_inputs import RequestError


@dataclass(frozen=True)
class LlmRequest:
    generation: object  # runtime.decoder.GenerationRequest
    streaming: bool
    exclude_input: bool


# emit(request_index, output_ids [1, 1, n] int32, sequence_length [1, 1] int32)
Emit = Callable[[int, np.ndarray, np.ndarray], None]


def _ids(tokens: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(tokens, dtype=np.int32).reshape(1, 1, -1), np.array([[len(tokens)]], dtype=np.int32)


class LlmHandler:
    """Args: runtime: a TrtllmCheckpointRuntime; max_input_len / max_output_len: the engine's limits."""

    def __init__(self, runtime, *, max_input_len: int, max_output_len: int):
        self.runtime = runtime
        self.max_input_len = max_input_len
        self.max_output_len = max_output_len

    @classmethod
    def from_parameters(cls, root: Path, params: Mapping[str, str]) -> "LlmHandler":
        from nvlm_deploy.runtime.decoder import TrtllmCheckpointRuntime

        runtime = TrtllmCheckpointRuntime.load(root / params["checkpoint_dir"], dtype=params["compute_precision"])
        limits = rq.repository_limits(root)
        return cls(runtime, max_input_len=limits.max_input_len, max_output_len=limits.max_output_len)

    def parse(self, inputs: Mapping[str, np.ndarray | None]) -> LlmRequest:
        """One request's tensors -> LlmRequest; RequestError on anything the engine would reject."""
        from nvlm_deploy.runtime.decoder import GenerationRequest

        ids = inputs.get("input_ids")
        if ids is None or np.asarray(ids).size == 0:
            raise RequestError("input_ids is empty.")
        ids = np.asarray(ids).reshape(-1)
        length = rq.first(inputs.get("input_lengths"), ids.size)
        ids = [int(i) for i in ids[:int(length)]]
        if len(ids) > self.max_input_len:
            raise RequestError(f"input_lengths {len(ids)} exceeds max_input_len {self.max_input_len}.")
        out_len = int(rq.first(inputs.get("request_output_len"), 0))
        if out_len < 1 or out_len > self.max_output_len:
            raise RequestError(f"request_output_len {out_len} must be between 1 and {self.max_output_len}.")
        table = inputs.get("prompt_embedding_table")
        vocab = int(rq.first(inputs.get("prompt_vocab_size"), 0))
        table = None if table is None or vocab == 0 else np.asarray(table, dtype=np.float32).reshape(-1, self.runtime.hidden_size)[:vocab]
        seed = rq.first(inputs.get("seed"))
        generation = GenerationRequest(
            input_ids=ids, prompt_table=table, max_new_tokens=out_len,
            end_id=_opt_int(rq.first(inputs.get("end_id"))), pad_id=_opt_int(rq.first(inputs.get("pad_id"))),
            temperature=float(rq.first(inputs.get("temperature"), 1.0)),
            top_k=int(rq.first(inputs.get("runtime_top_k"), 0)), top_p=float(rq.first(inputs.get("runtime_top_p"), 0.0)),
            seed=None if seed is None else int(seed))
        return LlmRequest(generation=generation, streaming=bool(rq.first(inputs.get("streaming"), False)),
                          exclude_input=bool(rq.first(inputs.get("exclude_input_in_output"), False)))

    def run(self, batch: Sequence[LlmRequest], emit: Emit) -> None:
        """Generate the batch together; emit() each streamed token, or each whole output at the end."""
        def on_token(k: int, token: int) -> None:
            if batch[k].streaming:
                emit(k, *_ids([token]))

        outputs = self.runtime.generate([r.generation for r in batch], on_token=on_token)
        for k, (req, tokens) in enumerate(zip(batch, outputs)):
            if not req.streaming:
                prefix = [] if req.exclude_input else list(req.generation.input_ids)
                emit(k, *_ids(prefix + list(tokens)))


def _opt_int(value) -> int | None:
    return None if value is None or int(value) < 0 else int(value)
