"""The bundled catalogs (models, hardware, weight and KV formats) and model lookup: a
catalog name or alias, a config.json file, a model folder, or a Hugging Face id found in
the local Hugging Face cache. Nothing is downloaded. An unknown name is refused with the
closest known names."""

from __future__ import annotations

import difflib
import functools
import json
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from servescope.capacity.model import ConfigError, ModelSpec, from_hf_config


class UnknownName(ValueError):
    """A model, GPU or format the catalogs do not hold; str() names it and the closest."""


@functools.cache
def _load(name: str) -> dict[str, Any]:
    text = resources.files("servescope.capacity").joinpath("data", name).read_text("utf-8")
    return yaml.safe_load(text)


def models() -> dict[str, dict[str, Any]]:
    return _load("models.yaml")["models"]


def hardware_table() -> dict[str, dict[str, Any]]:
    return _load("hardware.yaml")["gpus"]


def quantization_table() -> dict[str, Any]:
    return _load("quantization.yaml")


def _closest(name: str, names: list[str]) -> str:
    close = difflib.get_close_matches(name.lower(), names, n=3, cutoff=0.4)
    return f"; closest: {', '.join(close)}" if close else ""


def _index(table: dict[str, dict[str, Any]]) -> dict[str, str]:
    index = {}
    for key, entry in table.items():
        index[key] = key
        for alias in entry.get("aliases") or []:
            index[alias.lower()] = key
    return index


# -- hardware --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Hardware:
    key: str
    name: str
    memory_bytes: int       # what vLLM sees as the device's total
    memory_from: str        # where memory_bytes comes from
    bandwidth_gbs: float
    bf16_tflops: float
    fp8_tflops: float | None
    arch: str
    source: str
    unverified: tuple[str, ...] = ()

    @property
    def is_cpu(self) -> bool:
        return self.arch == "cpu"


def driver_reserve(total: int) -> int:
    """ESTIMATE of what CUDA's total (torch.cuda.mem_get_info, vLLM's total_gpu_memory)
    falls short of nvidia-smi's: about 0.44 GiB on 16-24 GB cards and 0.75-0.85 GiB on 80 GB
    ones in vLLM start-up logs quoted in public issues (14.56 GiB of a 15360 MiB T4, 23.55
    and 23.57 GiB of a 24564 MiB RTX 4090, 79.15 and 79.25 GiB of 80 GB cards). Taken as
    the larger of 0.5 GiB and 1% of the memory, so that the planner errs on the side of
    less memory."""
    return max(2**29, total // 100)


def hardware(name: str) -> Hardware:
    table = hardware_table()
    index = _index(table)
    key = index.get(name.lower())
    if key is None:
        raise UnknownName(f"unknown GPU {name!r} (known: {', '.join(sorted(table))}"
                          f"{_closest(name, list(index))})")
    e = table[key]
    if e.get("reported_mib"):
        nominal, origin = int(e["reported_mib"]) * 2**20, f"nvidia-smi's {e['reported_mib']} MiB"
    else:
        nominal, origin = int(e["memory_gb"] * 1e9), f"the nominal {e['memory_gb']} GB"
    if e["arch"] in {"cpu", "apple"}:
        memory = nominal
    elif e.get("cuda_total_gib"):
        # the total vLLM logs for this card: exact where a log shows it (to its 0.01 GiB)
        memory = int(float(e["cuda_total_gib"]) * 2**30)
        origin = (f"CUDA's total as vLLM logs it, {e['cuda_total_gib']} GiB "
                  f"({e['cuda_total_source']})")
    else:
        reserve = driver_reserve(nominal)
        memory = nominal - reserve
        origin += f" less {reserve / 2**30:.2f} GiB the driver keeps (estimate)"
    return Hardware(key=key, name=e["name"], memory_bytes=memory, memory_from=origin,
                    bandwidth_gbs=float(e["bandwidth_gbs"]), bf16_tflops=float(e["bf16_tflops"]),
                    fp8_tflops=e.get("fp8_tflops"), arch=e["arch"], source=e["source"],
                    unverified=tuple(e.get("unverified") or ()))


# -- weight and KV formats -------------------------------------------------------------------
@dataclass(frozen=True)
class WeightFormat:
    key: str
    bits: float
    applies_to: str  # linear | experts | all
    compute: str     # bf16 | fp8
    source: str


def weight_format(name: str) -> WeightFormat:
    table = quantization_table()
    weights, aliases = table["weights"], table.get("aliases") or {}
    key = name.lower()
    key = aliases.get(key, key)
    if key not in weights:
        names = [*weights, *aliases]
        raise UnknownName(f"unknown quantization {name!r} (known: {', '.join(sorted(weights))}"
                          f"{_closest(name, names)})")
    e = weights[key]
    return WeightFormat(key=key, bits=float(e["bits"]), applies_to=e["applies_to"],
                        compute=e["compute"], source=e["source"])


def kv_cache_dtype_bytes(name: str, model_dtype_bytes: int) -> int:
    table = quantization_table()["kv_cache"]
    if name.lower() not in table:
        raise UnknownName(f"unknown KV cache dtype {name!r} (known: {', '.join(table)})")
    size = table[name.lower()]["bytes"]
    return model_dtype_bytes if size is None else int(size)


# -- models ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelInfo:
    """A model spec and where it came from."""

    spec: ModelSpec
    source: str
    catalog: dict[str, Any] | None = None

    @property
    def default_quantization(self) -> str:
        if self.catalog and self.catalog.get("default_quantization"):
            return self.catalog["default_quantization"]
        method = (self.spec.quant_method or "").lower()
        if method in {"fp8", "mxfp4", "awq", "gptq"}:
            return method
        return "bf16" if self.spec.dtype in {"bfloat16", "float32"} else "fp16"


def _hf_cache_config(model_id: str) -> Path | None:
    """config.json of a model in the local Hugging Face cache (HF_HUB_CACHE, HF_HOME)."""
    hub = os.environ.get("HF_HUB_CACHE") or os.path.join(
        os.environ.get("HF_HOME") or os.path.expanduser("~/.cache/huggingface"), "hub")
    folder = Path(hub) / ("models--" + model_id.replace("/", "--"))
    snapshots = sorted((folder / "snapshots").glob("*/config.json"),
                       key=lambda p: p.stat().st_mtime)
    return snapshots[-1] if snapshots else None


def read_config(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read a config.json ({exc})") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: not a JSON object")
    return data


def model(name: str) -> ModelInfo:
    """Resolve `name`: a path to a config.json or a model folder, a catalog name or alias,
    or a Hugging Face id with a copy in the local cache."""
    path = Path(name).expanduser()
    if path.is_dir():
        path = path / "config.json"
        if not path.is_file():
            raise ConfigError(f"{path.parent}: no config.json in this folder")
    if path.is_file():
        try:
            spec = from_hf_config(read_config(path), name=path.parent.name)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
        return ModelInfo(spec=spec, source=str(path))
    table = models()
    index = _index(table)
    key = index.get(name.lower())
    if key is not None:
        entry = table[key]
        return ModelInfo(spec=from_hf_config(entry["config"], name=key),
                         source=entry["source"], catalog=entry)
    cached = _hf_cache_config(name) if "/" in name else None
    if cached:
        return ModelInfo(spec=from_hf_config(read_config(cached), name=name), source=str(cached))
    raise UnknownName(f"unknown model {name!r}: not a config.json, a model folder, a catalog "
                      f"model or a Hugging Face id in the local cache{_closest(name, list(index))}"
                      f" (catalog: {', '.join(sorted(table))})")
