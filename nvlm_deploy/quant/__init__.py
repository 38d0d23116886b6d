"""Quantized TensorRT-LLM checkpoints (FP8, INT4-AWQ) calibrated with nvidia-modelopt on image+text data.

Not implemented yet: no open issue covers it. `convert llm` writes bf16/fp16 checkpoints only.
"""
