"""modelopt's unified Hugging Face quantized checkpoint, made a complete NVLM-D directory, and read back.

`export_hf_checkpoint` (nvidia-modelopt 0.47, export/unified_export_hf.py) exports the calibrated
Qwen2 decoder: `config.json` with `quantization_config` (quant_method "modelopt") and
`hf_quant_config.json`; FP8 weights as F8_E4M3 with scalar `weight_scale` / `input_scale` (and
`k_proj.k_scale` / `v_proj.v_scale` for an FP8 KV cache); W4A16_AWQ weights as uint8 [N/2, K]
(modelopt `pack_int4_in_uint8`: row 2j low nibble) with `weight_scale` [N, K/G] and, where it could
not be folded into the preceding RMSNorm, `pre_quant_scale` [K]. It mutates the model (pre-quant
scales fused into the norms), so it runs after the TensorRT-LLM checkpoint is written.

This module prefixes those tensors with `language_model.`, copies the vision tower and projector
unquantized from the source checkpoint, and writes the source NVLM-D `config.json` with the
`quantization_config` at the top and in `llm_config`, plus the tokenizer files: what
TensorRT-LLM's PyTorch backend and vLLM read. `quant.hf_format` is how the project's own loader
(`model.checkpoint.CheckpointIndex`) reads it back.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from nvlm_deploy.quant.hf_format import HF_QUANT_CONFIG

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                   "generation_config.json")


def export_unified_hf(model, source_dir: str | Path, out_dir: str | Path, *, dtype, force: bool = False) -> Path:
    """Write the complete NVLM-D unified HF checkpoint of a calibrated model into `out_dir` (atomically)."""
    import tempfile

    from modelopt.torch.export import export_hf_checkpoint

    from nvlm_deploy.artifacts import atomic_output_dir
    from nvlm_deploy.model.checkpoint import CheckpointIndex, save_checkpoint

    source_dir, out_dir = Path(source_dir), Path(out_dir)
    with tempfile.TemporaryDirectory(prefix="nvlm-hf-export-") as scratch, \
            atomic_output_dir(out_dir, force=force) as tmp:
        export_hf_checkpoint(model.language_model, dtype=dtype.torch_dtype(), export_dir=scratch)
        from safetensors.torch import load_file

        tensors = {}
        for shard in sorted(Path(scratch).glob("*.safetensors")):
            tensors.update({f"language_model.{k}": v for k, v in load_file(str(shard)).items()})
        index = CheckpointIndex.open(source_dir)
        for name in index.names():
            if name.startswith(("vision_model.", "mlp1.")):
                tensors[name] = index.get(name)  # stored dtype, unquantized
        decoder_config = json.loads((Path(scratch) / "config.json").read_text(encoding="utf-8"))
        config = json.loads((source_dir / "config.json").read_text(encoding="utf-8"))
        quant = decoder_config["quantization_config"]
        config["quantization_config"] = quant
        config["llm_config"]["quantization_config"] = quant
        save_checkpoint(tensors, tmp, config=config)
        shutil.copy(Path(scratch) / HF_QUANT_CONFIG, tmp / HF_QUANT_CONFIG)
        for name in TOKENIZER_FILES:
            if (source_dir / name).is_file():
                shutil.copy(source_dir / name, tmp / name)
    return out_dir
