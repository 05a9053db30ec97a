"""Capacity planning: weights and KV-cache memory as vLLM accounts for them, what fits on
which hardware, and the physical bounds on latency. Pure functions over the bundled
catalogs (data/*.yaml) and a model's config.json; `servescope.capacity.plan.plan` makes
a whole plan."""

from servescope.capacity.catalog import Hardware, ModelInfo, UnknownName, hardware, model
from servescope.capacity.model import ConfigError, ModelSpec, from_hf_config
from servescope.capacity.plan import PlanError, PlanInput, Workload

__all__ = [
    "ConfigError", "Hardware", "ModelInfo", "ModelSpec", "PlanError", "PlanInput",
    "UnknownName", "Workload", "from_hf_config", "hardware", "model",
]
