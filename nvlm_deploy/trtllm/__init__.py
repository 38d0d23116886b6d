"""TensorRT-LLM's checkpoint format, as the rest of the package uses it.

| piece | module |
|---|---|
| HF -> TensorRT-LLM tensor names and split kinds (THE name table) | `trtllm.names` |
| tensor- and pipeline-parallel splits and their inverse | `trtllm.splits` |
| `config.json` (`TrtllmConfig`, `QuantConfig`, `MappingConfig`) | `trtllm.config` |
| safetensors files read and written tensor by tensor | `trtllm.safetensors_io` |
| rank files: which tensors each rank holds; reading every rank back merged | `trtllm.rank_files` |

`convert` writes checkpoints through it, `runtime` reads them through it; it imports neither.
"""
