"""backend.local_decoder: the tensorrt_llm model's decoder and scheduler inside the BLS's process."""

import asyncio

import numpy as np
import pytest

from nvlm_deploy.backend.local_decoder import LocalDecoder
from nvlm_deploy.backend.request_inputs import RequestError

PROMPT_IDS = [5, 17, 99, 3, 42, 7]


@pytest.fixture(scope="module")
def decoder(cpu_repo):
    local = LocalDecoder.from_repository(cpu_repo, "tensorrt_llm")
    yield local
    local.close()


def llm_inputs(tokens: int, *, stream: bool, ids=PROMPT_IDS) -> dict:
    """tensorrt_llm's tensors as the BLS sends them (greedy: no sampling inputs)."""
    return {"input_ids": np.array([ids], np.int32), "input_lengths": np.array([[len(ids)]], np.int32),
            "request_output_len": np.array([[tokens]], np.int32), "streaming": np.array([[stream]]),
            "exclude_input_in_output": np.array([[True]])}


def collect(decoder, inputs) -> list[dict]:
    async def run():
        return [outputs async for outputs in decoder.generate(inputs)]

    return asyncio.run(run())


def model_outputs(handler, inputs) -> list[dict]:
    """What the tensorrt_llm model's handler emits for the same tensors, run in this thread."""
    out = []
    handler.run([handler.parse(inputs)], lambda k, outputs: out.append(outputs))
    return out


@pytest.mark.parametrize("stream", [True, False])
def test_outputs_are_the_tensorrt_llm_models(decoder, stream):
    inputs = llm_inputs(12, stream=stream)
    got, want = collect(decoder, inputs), model_outputs(decoder.handler, inputs)
    assert len(got) == len(want) == (12 if stream else 1)
    for g, w in zip(got, want):
        assert set(g) >= {"output_ids", "cum_log_probs", "output_log_probs"}
        np.testing.assert_array_equal(np.asarray(g["output_ids"]).reshape(-1), np.asarray(w["output_ids"]).reshape(-1))


def test_a_request_the_model_refuses_raises_its_message_and_the_next_is_served(decoder):
    with pytest.raises(RequestError, match="request_output_len 0 must be between 1 and"):
        collect(decoder, llm_inputs(0, stream=False))
    with pytest.raises(RequestError, match="input_ids is empty"):
        collect(decoder, llm_inputs(4, stream=False, ids=[]))
    assert len(collect(decoder, llm_inputs(4, stream=True))) == 4


def test_closing_early_ends_the_generation_and_frees_the_slot(decoder, monkeypatch):
    """A client that goes away mid-stream: its generation leaves the batch at the next step, with the
    final flag alone (a cancellation), long before its 64 tokens; with one slot, the next request is
    admitted only once that happened, and is answered right."""
    from nvlm_deploy.backend import local_decoder
    from nvlm_deploy.backend.llm_scheduler import LlmScheduler

    senders = []

    class RecordingSender(local_decoder._LoopSender):  # the real sender, keeping what it was given
        def __init__(self, loop):
            super().__init__(loop)
            self.sent = []
            senders.append(self)

        def send(self, response=None, flags=0):
            self.sent.append((response, flags))
            super().send(response, flags)

    monkeypatch.setattr(local_decoder, "_LoopSender", RecordingSender)
    one_slot = LocalDecoder(LlmScheduler(decoder.handler, local_decoder.InProcess, slots=1))

    async def run():
        first = one_slot.generate(llm_inputs(64, stream=True))
        await first.__anext__()
        await first.aclose()
        return await asyncio.wait_for(_all(one_slot.generate(llm_inputs(6, stream=False))), 60)

    try:
        (whole,) = asyncio.run(run())
    finally:
        one_slot.close()
    first_sent = senders[0].sent
    assert first_sent[-1] == (None, local_decoder.FINAL)  # ended by the cancellation, not by its last token
    assert len(first_sent) - 1 < 64
    np.testing.assert_array_equal(np.asarray(whole["output_ids"]).reshape(-1),
                                  np.asarray(model_outputs(decoder.handler, llm_inputs(6, stream=False))[0]["output_ids"])
                                  .reshape(-1))


async def _all(generator) -> list:
    return [item async for item in generator]


def test_a_gpu_repository_is_refused_with_the_fix(tmp_path):
    from nvlm_deploy.errors import DeployError

    (tmp_path / "tensorrt_llm").mkdir()
    (tmp_path / "tensorrt_llm" / "config.pbtxt").write_text(
        'name: "tensorrt_llm"\nbackend: "tensorrtllm"\nmax_batch_size: 4\n'
        'parameters { key: "gpt_model_type" value: { string_value: "inflight_fused_batching" } }\n')
    with pytest.raises(DeployError, match="--bls-decoder tensorrt_llm"):
        LocalDecoder.from_repository(tmp_path, "tensorrt_llm")
