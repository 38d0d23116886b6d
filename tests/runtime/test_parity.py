"""End to end on CPU: vision ONNX + TensorRT-LLM checkpoint through the runtimes give the reference's tokens.

The reference is `ReferencePipeline` (PyTorch NVLM-D, greedy); ours is OnnxVisionEncoder for the
prompt table and TrtllmCheckpointRuntime over checkpoints converted at tp 1/2/4 x pp 1/2.
"""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from nvlm_deploy.convert.llm_checkpoint import convert_llm_checkpoint
from nvlm_deploy.runtime.decoder import GenerationRequest, TrtllmCheckpointRuntime

LAYOUTS = [(tp, pp) for tp in (1, 2, 4) for pp in (1, 2)]
MAX_NEW = 8


def _image(seed: int, size: tuple[int, int]) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


PROMPTS = {
    "text": ("Tell me a story about a cat.", []),
    "one_image": ("<image>\nWhat is in this picture?", [(1, (900, 450))]),
    "two_images": ("<image>\n<image>\nCompare the two images.", [(2, (448, 448)), (3, (300, 700))]),
}


@pytest.fixture(scope="module")
def pipeline(tiny_checkpoint):
    from nvlm_deploy.model.generate import ReferencePipeline

    return ReferencePipeline.from_model_dir(tiny_checkpoint, dtype="fp32", max_tiles=3, max_images=2)


@pytest.fixture(scope="module")
def vision(tiny_checkpoint, tmp_path_factory):
    from nvlm_deploy.convert.vision_onnx import export_vision_onnx
    from nvlm_deploy.runtime.vision import OnnxVisionEncoder

    return OnnxVisionEncoder(export_vision_onnx(tiny_checkpoint, tmp_path_factory.mktemp("vision"), dtype="fp32"))


@pytest.fixture(scope="module")
def cases(pipeline, vision):
    """name -> (prepared request, prompt table from ONNX, reference greedy tokens)."""
    out = {}
    for name, (prompt, images) in PROMPTS.items():
        prepared = pipeline.preprocessor.prepare(prompt, [_image(seed, size) for seed, size in images])
        table = None
        if prepared.num_image_tokens:
            feats = vision.encode(prepared.pixel_values)  # [T, tokens_per_tile, hidden]
            table = feats.reshape(-1, feats.shape[-1])
            assert table.shape[0] == prepared.num_image_tokens
        out[name] = (prepared, table, pipeline.generate_ids(prepared, max_new_tokens=MAX_NEW))
    return out


@pytest.fixture(scope="module")
def checkpoints(tiny_checkpoint, tmp_path_factory):
    root = tmp_path_factory.mktemp("parity")
    return {layout: convert_llm_checkpoint(tiny_checkpoint, root / f"tp{layout[0]}pp{layout[1]}",
                                           tp=layout[0], pp=layout[1], dtype="fp32") for layout in LAYOUTS}


@pytest.mark.parametrize("tp,pp", LAYOUTS)
def test_greedy_tokens_match_reference(checkpoints, cases, pipeline, tp, pp):
    runtime = TrtllmCheckpointRuntime.load(checkpoints[(tp, pp)])
    eos = pipeline.tokenizer.eos_id
    requests = [GenerationRequest(list(prepared.input_ids), prompt_table=table, max_new_tokens=MAX_NEW, end_id=eos)
                for prepared, table, _ in cases.values()]
    outputs = runtime.generate(requests)  # all prompts of the test at once
    for name, out in zip(cases, outputs):
        assert out == cases[name][2], f"{name}: tp{tp} pp{pp}"
    assert any(len(ref) > 0 for _, _, ref in cases.values())
    assert cases["two_images"][0].num_image_tokens > cases["one_image"][0].num_image_tokens > 0


def test_bf16_checkpoint_is_close_to_the_reference(tiny_checkpoint, tmp_path, cases, pipeline):
    """bf16 weights (the shipped dtype): logits within bf16 rounding of the fp32 reference."""
    runtime = TrtllmCheckpointRuntime.load(convert_llm_checkpoint(tiny_checkpoint, tmp_path, tp=2, pp=2))
    prepared, table, _ = cases["one_image"]
    ids = torch.tensor([prepared.input_ids])
    with torch.no_grad():
        ref = pipeline.model(ids, torch.from_numpy(table))[0, -1]
    h = runtime.embed(ids, torch.from_numpy(table))
    logits = runtime.forward(h, torch.arange(ids.shape[1])[None], runtime.new_cache(1, ids.shape[1]))[0]
    err = (logits - ref).abs().max() / ref.abs().max()
    assert 0 < err < 0.05
