import numpy as np
import pytest

from nvlm_deploy.backend.llm import LlmHandler
from nvlm_deploy.backend.request_inputs import RequestError


def test_streaming_and_exclude_input_follow_tensorrt_llm(engines, tiny_checkpoint):
    from nvlm_deploy.preprocess.tokenizer import Tokenizer
    from nvlm_deploy.runtime.decoder import TrtllmCheckpointRuntime

    llm = LlmHandler(TrtllmCheckpointRuntime.load(engines / "trtllm_checkpoint"), max_input_len=2048, max_output_len=64)
    ids = np.array([Tokenizer.load(tiny_checkpoint).encode("<|im_start|>user\nHi<|im_end|><|im_start|>assistant\n")], np.int32)
    base = {"input_ids": ids, "input_lengths": np.array([[ids.shape[1]]], np.int32),
            "request_output_len": np.array([[6]], np.int32), "end_id": np.array([[-1]], np.int32)}
    out = []
    llm.run([llm.parse({**base, "streaming": np.array([[True]])}),
             llm.parse({**base, "exclude_input_in_output": np.array([[False]])}),
             llm.parse({**base, "exclude_input_in_output": np.array([[True]])})],
            lambda k, o: out.append((k, o["output_ids"][0, 0].tolist(), int(o["sequence_length"][0, 0]))))
    streamed = [o for k, o, _ in out if k == 0]
    assert len(streamed) == 6 and all(len(o) == 1 for o in streamed)
    generated = sum(streamed, [])
    (echo,) = [(o, n) for k, o, n in out if k == 1]
    (plain,) = [(o, n) for k, o, n in out if k == 2]
    assert echo == (ids[0].tolist() + generated, ids.shape[1] + 6) and plain == (generated, 6)


def test_limits_are_checked_before_generation(engines):
    from nvlm_deploy.runtime.decoder import TrtllmCheckpointRuntime

    llm = LlmHandler(TrtllmCheckpointRuntime.load(engines / "trtllm_checkpoint"), max_input_len=4, max_output_len=8)
    with pytest.raises(RequestError, match="exceeds max_input_len 4"):
        llm.parse({"input_ids": np.arange(5, dtype=np.int32)[None], "request_output_len": np.array([[2]], np.int32)})
    with pytest.raises(RequestError, match="between 1 and 8"):
        llm.parse({"input_ids": np.arange(3, dtype=np.int32)[None], "request_output_len": np.array([[9]], np.int32)})
