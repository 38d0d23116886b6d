"""Safetensors files read and written one tensor at a time (TensorRT-LLM rank files, HF shards).

Reading uses plain positioned reads (pages of a memory map would stay resident and count against
the process); writing fixes the header up front from the tensors' specs, then places each tensor's
bytes at its offset as soon as it is ready, so peak memory stays near the largest tensor.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import torch

from nvlm_deploy.errors import DeployError

# safetensors header dtype codes (the file format's own table)
ST_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64,
             "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
             "U8": torch.uint8, "BOOL": torch.bool}
ST_NAMES = {v: k for k, v in ST_DTYPES.items()}


class ShardReader:
    """Reads single tensors of a sharded safetensors checkpoint with positioned reads (no mmap)."""

    def __init__(self, root: Path, weight_map: dict[str, str]):
        self.root, self.weight_map = root, weight_map
        self._headers: dict[str, tuple[int, dict]] = {}
        self._files: dict[str, object] = {}

    def _header(self, shard: str) -> tuple[int, dict]:
        if shard not in self._headers:
            path = self.root / shard
            with open(path, "rb") as f:
                raw = f.read(8)
                if len(raw) != 8:
                    raise DeployError(f"{path} is not a safetensors file (shorter than 8 bytes).")
                (n,) = struct.unpack("<Q", raw)
                try:
                    header = json.loads(f.read(n))
                except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                    raise DeployError(f"{path} has an unreadable safetensors header ({exc}); re-copy it.") from None
            self._headers[shard] = (8 + n, header)
        return self._headers[shard]

    def check(self, names: list[str]) -> None:
        """Raise one DeployError naming every tensor whose shard does not hold it."""
        missing = [n for n in names if n not in self._header(self.weight_map[n])[1]]
        if missing:
            raise DeployError(f"{self.root}: {len(missing)} tensor(s) listed in the index are missing from "
                              f"their shard: {', '.join(missing[:20])}{' ...' if len(missing) > 20 else ''}. "
                              "A shard is incomplete or the index is stale; re-copy the checkpoint.")

    def spec(self, name: str) -> tuple[torch.dtype, tuple[int, ...]]:
        entry = self._header(self.weight_map[name])[1][name]
        if entry["dtype"] not in ST_DTYPES:
            raise DeployError(f"{self.root}: tensor {name!r} has dtype {entry['dtype']}, which is not supported.")
        return ST_DTYPES[entry["dtype"]], tuple(entry["shape"])

    def get(self, name: str) -> torch.Tensor:
        """The tensor in its stored dtype, in freshly allocated memory."""
        shard = self.weight_map[name]
        start, header = self._header(shard)
        begin, end = header[name]["data_offsets"]
        dtype, shape = self.spec(name)
        buf = torch.empty(end - begin, dtype=torch.uint8)
        if shard not in self._files:
            self._files[shard] = open(self.root / shard, "rb")
        f = self._files[shard]
        f.seek(start + begin)
        if f.readinto(memoryview(buf.numpy())) != end - begin:
            raise DeployError(f"{self.root / shard} is truncated: tensor {name!r} is cut short; re-copy the shard.")
        return buf.view(dtype).reshape(shape)

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()


class SafetensorsWriter:
    """Writes one safetensors file tensor by tensor: the header is fixed up front from the specs."""

    def __init__(self, path: Path, specs: dict[str, tuple[torch.dtype, tuple[int, ...]]]):
        header, offset = {"__metadata__": {"format": "pt"}}, 0
        for name, (dtype, shape) in specs.items():
            nbytes = torch.Size(shape).numel() * torch.empty(0, dtype=dtype).element_size()
            header[name] = {"dtype": ST_NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # the format allows space padding; keeps data 8-byte aligned
        self.path, self.specs, self.header = path, specs, header
        self.data_start = 8 + len(raw)
        self.written: set[str] = set()
        self.file = open(path, "wb")
        self.file.write(struct.pack("<Q", len(raw)) + raw)
        self.file.truncate(self.data_start + offset)

    def write(self, name: str, tensor: torch.Tensor) -> None:
        dtype, shape = self.specs[name]
        if tensor.dtype != dtype or tuple(tensor.shape) != shape:
            raise AssertionError(f"{self.path.name}:{name} is {tensor.dtype}{tuple(tensor.shape)}, "
                                 f"its header says {dtype}{shape}")
        self.file.seek(self.data_start + self.header[name]["data_offsets"][0])
        if tensor.numel():
            self.file.write(memoryview(tensor.contiguous().reshape(-1).view(torch.uint8).numpy()))
        self.written.add(name)

    def close(self) -> None:
        self.file.close()
        unwritten = sorted(set(self.specs) - self.written)
        if unwritten:
            raise AssertionError(f"{self.path.name}: tensors never written: {unwritten[:10]}")
