"""What a compiled step costs and what the devices can do: FLOPs, peaks, MFU, collectives.

``step_flops(compiled)`` is XLA's cost analysis of the compiled (SPMD-partitioned) step:
FLOPs per device per step, every op counted as XLA counts it (matmuls at 2 FLOPs per
multiply-add, elementwise ops too, rematerialised ops again). ``mfu`` divides the achieved
rate by the device's dense bf16 peak from ``PEAK_FLOPS`` (vendor datasheets, per chip);
it is ``None`` where no peak is known (CPUs). A float32 step is compared with the bf16 peak
too, which is what MFU conventionally means (PaLM, MaxText).
"""

from __future__ import annotations

import re

import jax

# Dense bf16 peak FLOP/s per chip (no sparsity), matched as a prefix of device_kind.
PEAK_FLOPS = {
  "NVIDIA H200": 989e12,
  "NVIDIA H100": 989e12,
  "NVIDIA A100": 312e12,
  "NVIDIA L4": 121e12,
  "NVIDIA A10G": 70e12,
  "TPU v6": 918e12,
  "TPU v5p": 459e12,
  "TPU v5 lite": 197e12,
  "TPU v5e": 197e12,
  "TPU v4": 275e12,
  "TPU v3": 123e12,
}
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
_ITEMSIZE = {
  "f64": 8,
  "s64": 8,
  "u64": 8,
  "c64": 8,
  "f32": 4,
  "s32": 4,
  "u32": 4,
  "bf16": 2,
  "f16": 2,
  "s16": 2,
  "u16": 2,
  "s8": 1,
  "u8": 1,
  "pred": 1,
  "f8e4m3fn": 1,
  "f8e5m2": 1,
}


def peak_flops(device=None) -> float | None:
  """The dense bf16 peak of ``device`` (default: the first), or None if unknown."""
  kind = (device or jax.devices()[0]).device_kind
  return next((peak for name, peak in PEAK_FLOPS.items() if kind.startswith(name)), None)


def step_flops(compiled) -> float | None:
  """FLOPs per device of one call of a compiled function (XLA's cost analysis)."""
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost["flops"]) if cost and "flops" in cost else None


def mfu(flops_per_step: float | None, steps_per_sec: float, device=None) -> float | None:
  """Model FLOPs utilisation: achieved FLOP/s per device over the device's peak."""
  peak = peak_flops(device)
  if peak is None or not flops_per_step:
    return None
  return flops_per_step * steps_per_sec / peak


def speed(flops_per_step: float | None, steps_per_sec: float) -> dict:
  """``{'flops_per_sec', 'mfu'}`` per device, as the trainer logs them (``None`` if unknown)."""
  rate = flops_per_step * steps_per_sec if flops_per_step else None
  return {"flops_per_sec": rate, "mfu": mfu(flops_per_step, steps_per_sec)}


def collectives(hlo_text: str) -> dict:
  """``{op: {'count', 'bytes'}}`` of the collectives in an optimized HLO module (bytes of
  each op's result per device, the data it moves in order of magnitude)."""
  out = {op: {"count": 0, "bytes": 0} for op in COLLECTIVES}
  pattern = re.compile(r"=\s*(.+?)\s+(" + "|".join(COLLECTIVES) + r")(?:-start)?\(")
  for line in hlo_text.splitlines():
    match = pattern.search(line)
    if not match or "-done" in line.split("=")[0]:
      continue
    size = 0
    for dtype, dims in re.findall(r"([a-z]+\d*[a-z0-9]*)\[([\d,]*)\]", match.group(1)):
      n = 1
      for d in filter(None, dims.split(",")):
        n *= int(d)
      size += n * _ITEMSIZE.get(dtype, 4)
    out[match.group(2)]["count"] += 1
    out[match.group(2)]["bytes"] += size
  return {op: v for op, v in out.items() if v["count"]}
