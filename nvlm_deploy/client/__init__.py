"""gRPC clients of a served NVLM-D: `NvlmClient` (blocking) and `AsyncNvlmClient` (asyncio).

Loaded lazily so `import nvlm_deploy.client` does not import grpc.
"""

_EXPORTS = {"NvlmClient": "sync", "AsyncNvlmClient": "aio", "ChatRequest": "tensors", "ServerError": "tensors",
            "ServerUnavailable": "tensors"}


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f"nvlm_deploy.client.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'nvlm_deploy.client' has no attribute {name!r}")


__all__ = list(_EXPORTS)
