"""Layer-by-layer calibration: one decoder layer's weights in host memory at a time.

modelopt's whole-model flow holds the whole decoder in float32 while it calibrates (NVLM-D-72B:
about 290 GB). Calibration is local to a layer: with quantizers in calibration mode a layer's
inputs are the unquantized outputs of the layers before it, and max / awq_lite calibration of a
linear depends only on that linear's inputs (modelopt 0.47 says as much: every algorithm it ships
supports `layerwise.enable`, model_calib / utils/layerwise_calib.py). Its own layerwise mode still
needs the whole model loaded, so this module does the same walk with the checkpoint on disk:

1. the vision encoder + projector (alone) make the calibration prompt tables; the embedding rows
   (read from the memory-mapped checkpoint) make each request's input hidden states [1, L, H];
2. for each layer i: a one-layer Qwen2ForCausalLM gets layer i's weights (float32) as its layer 0,
   runs every request once unquantized (its outputs are layer i + 1's inputs), then
   `mtq.quantize` calibrates it with the recipe's config on the same inputs; its linears are read
   out (`quant.linears.collect`) in their stored form and written at once into every rank file
   that holds the layer (`quant.trtllm_checkpoint.StreamingRankFiles`, headers planned up front
   from the shapes), and the layer is freed.

Peak memory: one layer in float32 with modelopt's state, the calibration hidden states (requests x
tokens x hidden, float32) and one tensor at a time of the pass-through ones (embedding, lm_head).
The files equal the whole-model flow's byte for byte (tests/quant/test_quantize.py).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from nvlm_deploy.trtllm.names import HF_PREFIX

EMBEDDING = f"{HF_PREFIX}model.embed_tokens.weight"
VISION_PREFIXES = ("vision_model.", "mlp1.")


def write_layerwise(model_dir: str | Path, directory: Path, options, *, dtype) -> int:
    """Calibrate layer by layer and write config.json + rank files into `directory` as each layer finishes.

    Returns the (padded) intermediate size written in the config.

    Args:
        model_dir: HF NVLM-D checkpoint.
        directory: the (temporary) trtllm_checkpoint directory.
        options: `quant.quantize.QuantizeOptions`.
        dtype: the checkpoint's model dtype (`contracts.precision`).
    """
    from nvlm_deploy.config import NvlmConfig
    from nvlm_deploy.model.checkpoint import CheckpointIndex
    from nvlm_deploy.quant.linears import meta_decoder
    from nvlm_deploy.quant.recipes import recipe
    from nvlm_deploy.quant.trtllm_checkpoint import StreamingRankFiles, checkpoint_config, padded_mlp_width
    from nvlm_deploy.trtllm.names import plan_tensors
    from nvlm_deploy.trtllm.rank_files import RankLayout

    r = recipe(options.recipe)
    config = NvlmConfig.from_hf(model_dir)
    llm = config.llm
    index = CheckpointIndex.open(model_dir)  # memory-mapped: pass-through tensors are read one at a time
    names = sorted(n for n in index.names(HF_PREFIX) if n.endswith((".weight", ".bias")))
    padded = padded_mlp_width(llm, options)
    targets = plan_tensors(names, num_layers=llm.num_hidden_layers, attention_bias=llm.attention_bias,
                           tie_word_embeddings=llm.tie_word_embeddings, where=str(model_dir))
    checkpoint_config(llm, options, padded=padded, dtype=dtype).write(directory)
    plan = meta_decoder(llm.num_hidden_layers, index.shape, int4=r.int4, group_size=options.group_size,
                        kv_cache=options.kv_cache == "fp8", padded=padded)
    files = StreamingRankFiles(directory, targets, index.get, RankLayout(tp=options.tp, pp=options.pp,
                                                                         num_layers=llm.num_hidden_layers),
                               shape=index.shape, plan=plan, dtype=dtype.torch_dtype(),
                               num_kv_heads=llm.num_key_value_heads, int4=r.int4, group_size=options.group_size)
    try:
        calibrate_layerwise(model_dir, config, index, options, padded=padded, on_layer=files.add_layer)
        files.finish()
    except BaseException:
        files.abort()
        raise
    return padded


@torch.no_grad()
def calibrate_layerwise(model_dir: str | Path, config, index, options, *, padded: int, on_layer) -> None:
    """Calibrate one layer at a time; each finished layer (compacted, padded) goes to `on_layer(i, decoder)`.

    Args:
        model_dir: HF NVLM-D checkpoint (its preprocessor makes the calibration requests).
        config: its NvlmConfig.
        index: its CheckpointIndex.
        options: `quant.quantize.QuantizeOptions`.
        padded: the MLP width the checkpoint holds (`trtllm_checkpoint.padded_mlp_width`).
        on_layer: called with (layer index, CalibratedDecoder of that layer) as each layer finishes.
    """
    from nvlm_deploy.lazy import require
    from nvlm_deploy.progress import progress
    from nvlm_deploy.quant import linears
    from nvlm_deploy.quant.recipes import recipe

    r = recipe(options.recipe)
    mtq = require("modelopt.torch.quantization", extra="quant", purpose=f"quantize --recipe {r.name}")
    llm = config.llm
    hidden = calibration_hidden_states(model_dir, config, index, options)
    cfg = r.modelopt_config(group_size=options.group_size, kv_cache=options.kv_cache)
    for i in progress(range(llm.num_hidden_layers), desc="calibrate layers", unit="layer"):
        lm = one_layer_model(llm, index, i)
        outputs = layer_outputs(lm, hidden)  # before quantizers exist: the unquantized function

        def loop(model, inputs=hidden):
            for h in inputs:
                model(inputs_embeds=h)

        mtq.quantize(lm, cfg, loop)
        part = linears.collect(lm, int4=r.int4, group_size=options.group_size, kv_cache=options.kv_cache == "fp8",
                               first_layer=i)
        del lm
        for lin in part.linears.values():
            lin.compact(int4=r.int4, group_size=options.group_size)
        linears.pad_intermediate(part, num_layers=llm.num_hidden_layers, intermediate=llm.intermediate_size,
                                 padded=padded, group_size=options.group_size, layers=[i])
        on_layer(i, part)
        del part
        hidden = outputs


def calibration_hidden_states(model_dir, config, index, options) -> list[torch.Tensor]:
    """Each calibration request's decoder input [1, L, H] float32: token embeddings with image rows from the tables."""
    from nvlm_deploy.model.nvlm import NvlmModel
    from nvlm_deploy.preprocess.request import Preprocessor
    from nvlm_deploy.quant.calibration import calibration_requests

    with torch.device("meta"):
        model = NvlmModel(config)
    parts = [n for n in model.state_dict() if n.startswith(VISION_PREFIXES)]
    state = {n: index.get(n).float() for n in parts}
    state[EMBEDDING] = index.get(EMBEDDING)  # stored dtype, memory-mapped: only the looked-up rows are read
    model.load_state_dict(state, strict=False, assign=True)
    requests = calibration_requests(model, Preprocessor.from_model_dir(model_dir), options.calib, size=options.calib_size)
    return [model.embed(torch.tensor([req.input_ids]), req.prompt_table, dtype=torch.float32) for req in requests]


def one_layer_model(llm, index, layer: int):
    """A float32 Qwen2ForCausalLM whose only layer holds checkpoint layer `layer` (no embedding or lm_head to speak of)."""
    from transformers import Qwen2ForCausalLM
    from transformers.models.qwen2.modeling_qwen2 import Qwen2RotaryEmbedding

    from nvlm_deploy.model.nvlm import qwen2_config

    # vocab 1: inputs come as embeddings and the lm_head output is never read (modelopt leaves lm_head unquantized)
    cfg = qwen2_config(dataclasses.replace(llm, num_hidden_layers=1, vocab_size=1, tie_word_embeddings=False,
                                           bos_token_id=0, eos_token_id=0))
    with torch.device("meta"):
        lm = Qwen2ForCausalLM(cfg)
    src = f"{HF_PREFIX}model.layers.{layer}."
    state = {f"model.layers.0.{n[len(src):]}": index.get(n).float() for n in index.names(src)}
    state["model.norm.weight"] = torch.ones(llm.hidden_size)
    state["model.embed_tokens.weight"] = torch.zeros(1, llm.hidden_size)
    state["lm_head.weight"] = torch.zeros(1, llm.hidden_size)
    lm.load_state_dict(state, strict=True, assign=True)
    lm.model.rotary_emb = Qwen2RotaryEmbedding(config=lm.config)
    return lm.eval()


def layer_outputs(lm, hidden: list[torch.Tensor]) -> list[torch.Tensor]:
    """The one layer's output for every input (a forward hook; the rest of the model's output is ignored)."""
    outputs = []

    def keep(module, args, output):
        outputs.append((output[0] if isinstance(output, tuple) else output).detach())

    handle = lm.model.layers[0].register_forward_hook(keep)
    try:
        for h in hidden:
            lm(inputs_embeds=h)
    finally:
        handle.remove()
    return outputs
