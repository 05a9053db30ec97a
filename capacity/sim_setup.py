"""The simulated engine for a planned setup: the scheduler's limits and KV blocks from the
planner (capacity.setup: vLLM's num_blocks, block size, max_num_seqs and
max_num_batched_tokens defaults) and, without a calibration, the physics step model."""

from __future__ import annotations

from dataclasses import dataclass

from servescope.capacity.kv import dtype_bytes
from servescope.capacity.setup import PlanInput, Setup, setup
from servescope.capacity.simulator import SchedulerConfig
from servescope.capacity.steptime import PhysicsStepModel, physics_step_model


@dataclass(frozen=True)
class SimSetup:
    config: SchedulerConfig
    physics: PhysicsStepModel
    setup: Setup

    def describe(self) -> str:
        c = self.config
        return (f"max_num_seqs {c.max_num_seqs}, max_num_batched_tokens "
                f"{c.max_num_batched_tokens}, {c.kv_blocks:,} KV blocks of {c.block_size} "
                f"tokens ({c.kv_blocks * c.block_size:,} tokens), tp {self.setup.tp}")


def sim_setup(inp: PlanInput, tp: int | None = None, prefix_caching: bool = True,
              bw_efficiency: float = 0.7, flops_efficiency: float = 0.5,
              overhead_s: float = 0.002) -> SimSetup:
    """vLLM's scheduler for this setup (one replica); raises ValueError when the model does
    not fit (no KV block for one max_model_len request)."""
    tp = tp or inp.tp or inp.gpus or 1
    s = setup(inp, tp)
    if not s.fits:
        raise ValueError(f"{inp.model.spec.name} does not fit on {inp.hardware.name} at tp {tp}: "
                         f"{s.kv_budget} bytes left for the KV cache")
    config = SchedulerConfig(max_num_seqs=s.max_num_seqs,
                             max_num_batched_tokens=s.max_num_batched_tokens,
                             kv_blocks=max(1, s.cap.num_blocks - 1),  # vLLM keeps a null block
                             block_size=s.layout.block_size, prefix_caching=prefix_caching)
    physics = physics_step_model(inp.model.spec, s.fmt, inp.hardware, tp, s.kv_bytes,
                                 dtype_bytes(s.dtype), bw_efficiency, flops_efficiency,
                                 overhead_s)
    return SimSetup(config, physics, s)
