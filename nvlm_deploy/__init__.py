"""nvlm-deploy: a deployment compiler for NVLM-D (and InternVL siblings).

Importing the package is cheap: no torch, TensorRT, TensorRT-LLM or modelopt import happens here.
"""

__version__ = "0.1.0"
