"""Where `tensorrt_llm_bls` decodes: its `decoder` parameter (`package --bls-decoder`).

- local: the CPU decoder runs in the BLS's own process (backend.local_decoder; the default on cpu).
  A generation then crosses no process boundary: on the demo model a whole text answer spent
  5.1 ms in tritonserver beyond the same work in-process with the BLS calling tensorrt_llm, 2.7 ms
  decoding locally, against 2.2 ms for a Python model that answers at once (benchmarks/RESULTS.md,
  serving overhead, 2026-12-01; issue 12). The tensorrt_llm model still loads for the ensemble, so
  the decoder's weights are in memory twice.
- tensorrt_llm: each generation is a BLS request to the tensorrt_llm model (the only choice on gpu,
  where that model is the tensorrtllm backend).
"""

PARAMETER = "decoder"  # the tensorrt_llm_bls config.pbtxt parameter key
LOCAL, TENSORRT_LLM = "local", "tensorrt_llm"
CHOICES = (LOCAL, TENSORRT_LLM)


def default(runtime: str) -> str:
    """The decoder a repository of `runtime` ("cpu" | "gpu") gets unless the user chooses."""
    return LOCAL if runtime == "cpu" else TENSORRT_LLM
