"""HF checkpoint I/O: sharded safetensors with `model.safetensors.index.json`, memory-mapped.

Tensors are read one at a time through `safe_open` (memory-mapped), so callers can stream a
160 GB checkpoint with little memory. Every failure names the file and the fix.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from nvlm_deploy.errors import DeployError

if TYPE_CHECKING:
    import torch

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
PREFIXES = ("vision_model.", "mlp1.", "language_model.")


class CheckpointIndex:
    """Maps tensor names to shards; opens each shard lazily and keeps it memory-mapped."""

    def __init__(self, root: Path, weight_map: dict[str, str]):
        self.root = root
        self.weight_map = weight_map
        self._handles: dict[str, object] = {}
        # A modelopt unified HF checkpoint (`nvlm-deploy quantize --hf-out`): its quantized decoder
        # weights read as float32 (`quant.hf_format.dequantize_tensor`) and its scale tensors are hidden.
        self.quant_algo: str | None = None
        self.group_size = 128

    @staticmethod
    def exists(model_dir: str | Path) -> bool:
        root = Path(model_dir)
        return (root / INDEX_NAME).is_file() or (root / SINGLE_NAME).is_file()

    @classmethod
    def open(cls, model_dir: str | Path) -> "CheckpointIndex":
        """Read the index (or the single-file checkpoint) and check that every shard exists."""
        root = Path(model_dir)
        index_path = root / INDEX_NAME
        if index_path.is_file():
            try:
                weight_map = json.loads(index_path.read_text(encoding="utf-8"))["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise DeployError(f"{index_path} is not a valid safetensors index ({exc!r}): "
                                  "it needs a 'weight_map' of tensor name -> shard file.") from None
            missing = sorted({s for s in weight_map.values() if not (root / s).is_file()})
            if missing:
                raise DeployError(f"{index_path} names shard(s) that do not exist: {missing}. "
                                  "Copy the complete checkpoint (every shard listed in the index).")
            return cls(root, weight_map)._read_quantization()
        single = root / SINGLE_NAME
        if single.is_file():
            index = cls(root, {})
            index.weight_map = {name: SINGLE_NAME for name in index._handle(SINGLE_NAME).keys()}
            return index._read_quantization()
        raise DeployError(f"{root} holds no {INDEX_NAME} or {SINGLE_NAME}: "
                          "point --model at a HF checkpoint directory with safetensors weights.")

    def _handle(self, shard: str):
        if shard not in self._handles:
            from safetensors import SafetensorError, safe_open

            path = self.root / shard
            try:
                self._handles[shard] = safe_open(str(path), framework="pt")
            except (SafetensorError, OSError) as exc:
                raise DeployError(f"{path} is not a readable safetensors file ({exc}). "
                                  "Re-download or re-copy this shard.") from None
        return self._handles[shard]

    def _read_quantization(self) -> "CheckpointIndex":
        from nvlm_deploy.quant.hf_format import group_size_of, quant_algo_of

        self.quant_algo = quant_algo_of(self.root)
        if self.quant_algo == "W4A16_AWQ":
            self.group_size = group_size_of(self.root)
        return self

    def names(self, prefix: str = "") -> list[str]:
        if self.quant_algo is not None:
            from nvlm_deploy.quant.hf_format import is_scale

            return sorted(n for n in self.weight_map if n.startswith(prefix) and not is_scale(n))
        return sorted(n for n in self.weight_map if n.startswith(prefix))

    def __contains__(self, name: str) -> bool:
        return name in self.weight_map

    def _checked_handle(self, name: str):
        if name not in self.weight_map:
            raise DeployError(f"tensor {name!r} is not in the checkpoint at {self.root}.")
        shard = self.weight_map[name]
        handle = self._handle(shard)
        if name not in handle.keys():
            raise DeployError(f"{self.root / shard} does not contain tensor {name!r}, "
                              f"although {INDEX_NAME} says it does: the shard is incomplete or the index is stale.")
        return handle

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._checked_handle(name).get_slice(name).get_shape())

    def dtype_name(self, name: str) -> str:
        return self._checked_handle(name).get_slice(name).get_dtype()

    def get(self, name: str) -> "torch.Tensor":
        """One tensor, memory-mapped, in its stored dtype (a quantized weight: dequantized, float32)."""
        tensor = self._checked_handle(name).get_tensor(name)
        if self.quant_algo is None or not name.endswith(".weight"):
            return tensor
        from nvlm_deploy.quant.hf_format import dequantize_tensor

        module = name[: -len("weight")]
        return dequantize_tensor(name, tensor, lambda suffix: self.get(module + suffix) if module + suffix in self else None,
                                 quant_algo=self.quant_algo, group_size=self.group_size)

    def tensors(self, names: Iterable[str]) -> Iterator[tuple[str, "torch.Tensor"]]:
        for name in names:
            yield name, self.get(name)

    def nbytes(self, name: str) -> int:
        sizes = {"F64": 8, "F32": 4, "I64": 8, "I32": 4, "F16": 2, "BF16": 2, "I16": 2,
                 "U8": 1, "I8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
        n = 1
        for d in self.shape(name):
            n *= d
        return n * sizes.get(self.dtype_name(name), 4)


def check_names(*, expected: Iterable[str], found: Iterable[str], where: str) -> None:
    """Raise one DeployError listing every missing and every unexpected tensor by name."""
    expected, found = set(expected), set(found)
    missing, extra = sorted(expected - found), sorted(found - expected)
    if missing or extra:
        lines = [f"{where}: the checkpoint's tensors do not match the model."]
        if missing:
            lines.append(f"Missing ({len(missing)}): " + ", ".join(missing[:20]) + (" ..." if len(missing) > 20 else ""))
        if extra:
            lines.append(f"Unexpected ({len(extra)}): " + ", ".join(extra[:20]) + (" ..." if len(extra) > 20 else ""))
        raise DeployError("\n".join(lines))


def save_checkpoint(
    tensors: Mapping[str, "torch.Tensor"],
    out_dir: str | Path,
    *,
    config: dict,
    max_shard_bytes: int = 2 * 1024**3,
) -> None:
    """Write `config.json`, `model-0000k-of-0000n.safetensors` shards and the index into `out_dir`.

    Shard 1 starts with the LLM embeddings and mlp1, as in NVLM-D-72B; vision comes last.
    """
    from safetensors.torch import save_file

    out = Path(out_dir)
    order = sorted(tensors, key=_shard_order)
    shards: list[list[str]] = [[]]
    size = 0
    for name in order:
        nbytes = tensors[name].numel() * tensors[name].element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    weight_map = {}
    for k, names in enumerate(shards, start=1):
        shard = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
        save_file({n: tensors[n].contiguous() for n in names}, str(out / shard), metadata={"format": "pt"})
        weight_map.update({n: shard for n in names})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / INDEX_NAME).write_text(json.dumps(index, indent=2), encoding="utf-8")
    (out / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")


def _shard_order(name: str) -> tuple[int, str]:
    if name.startswith("language_model.model.embed_tokens") or name.startswith("mlp1."):
        return (0, name)
    if name.startswith("language_model."):
        return (1, name)
    return (2, name)
