"""Serving, inside Triton: the work of each Python-backend model (`triton_repo/*/1/model.py`).

preprocessing, vision (+ vision_trt for the TensorRT plan), llm (the CPU tensorrt_llm model), bls,
detokenize, request_inputs (request tensors and the repository's limits), pbutils (glue with
`triton_python_backend_utils`). Nothing here starts a server or writes a repository: that is
`nvlm_deploy.serve`.
"""
