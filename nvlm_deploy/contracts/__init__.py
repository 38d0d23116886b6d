"""The contracts between stages, each defined once and imported by every stage that uses it.

| contract | module |
|---|---|
| request limits and every size derived from them | `contracts.limits` (`DeploymentLimits`) |
| stage manifests (`manifest.json`), typed | `contracts.manifest` |
| the target directory and its stage registry | `contracts.target` (`Target`, `STAGES`) |
| precisions and their names in every library | `contracts.precision` |
| the vision encoder's tensor and file names | `contracts.vision_io` |
| the client-facing tensors of the entry points | `contracts.client_tensors` |

TensorRT-LLM's checkpoint format (tensor names, splits, config) is `nvlm_deploy.trtllm`.
"""
