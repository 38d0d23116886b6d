"""Serving, offline side: everything that runs before or around tritonserver, never inside it.

package (fill the triton_repo/ templates from a target's manifests), template (${var} filling that
refuses leftovers), repository_paths (absolute paths and relocation), gpu_memory (the KV-cache
fraction), launch (engine/GPU checks, mpirun leader mode), server (find/start/stop tritonserver),
upstream (facts about tensorrtllm_backend, as data with their source). The code that runs inside
Triton's Python models is `nvlm_deploy.backend`.
"""
