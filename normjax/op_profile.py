"""Where a compiled step's time goes: a per-op table from a profiler trace and the step's HLO.

    from normjax import op_profile
    compiled = jax.jit(step).lower(*args).compile()
    ops = op_profile.measure(lambda: compiled(*args), compiled.as_text(), steps=3)
    print(op_profile.table(ops, steps=3))

``measure`` runs the step under ``jax.profiler`` and reads the trace back with
``jax.profiler.ProfileData``: every executed thunk of the step is an event named after its HLO
instruction (``ynn_fusion.59``, ``loop_multiply_fusion.3``, ``while.55``). The events are
nested per thread (a ``while`` contains its body's thunks), so each op gets its *self* time:
its duration less that of the HLO ops it contains. ``hlo_ops`` parses the optimized HLO text
to name what each instruction computes: the dot's ``(m, k) x (k, n)`` and which operands are
transposed, a convolution's kernel and output shape, reductions, copies (layout changes),
scatter / gather, loops, and plain elementwise fusions. ``table`` prints a markdown table of
per-category totals and the largest single ops, with each dot's achieved GFLOP/s.

The category totals sum self times over every thread, so where XLA runs independent thunks
concurrently their sum exceeds the wall time of the step; the table prints both. Events come
from the XLA:CPU thunk runtime (and the per-kernel device events on GPU), named by HLO
instruction; events whose name is not an instruction of this module are not counted.
"""

from __future__ import annotations

import collections
import glob
import os
import re
import tempfile
from typing import NamedTuple

import jax

_INSTR = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (\S+?)(?:\{[^}]*\})? ([\w\-]+)\((.*)$")
_COMP = re.compile(r"^(?:ENTRY )?%([\w.\-]+) .*\{$")
_CALLS = re.compile(r"(?:calls|to_apply|body|condition)=%([\w.\-]+)")
_DIMS = re.compile(r"(lhs|rhs)_(contracting|batch)_dims=\{([\d,]*)\}")


class Op(NamedTuple):
  """One HLO instruction of the step: its category, output shape and what it computes."""

  category: str
  shape: str
  detail: str
  flops: float  # dots and convolutions only (2 per multiply-add), else 0


def _shape_dims(shape: str) -> list[int]:
  inner = shape[shape.find("[") + 1 : shape.find("]")]
  return [int(d) for d in inner.split(",") if d]


def _dot(line: str, shapes: dict[str, str], out: str) -> tuple[str, float]:
  args = re.findall(r"%([\w.\-]+)", line.split(")", 1)[0])
  dims = {
    f"{side}_{kind}": [int(d) for d in v.split(",") if d] for side, kind, v in _DIMS.findall(line)
  }
  lhs = _shape_dims(shapes.get(args[0], "[]")) if args else []
  contract = dims.get("lhs_contracting", [])
  k = 1
  for d in contract:
    k *= lhs[d] if d < len(lhs) else 1
  n_out = 1
  for d in _shape_dims(out):
    n_out *= d
  lt = "T" if contract and contract[0] != len(lhs) - 1 else "N"
  rhs_c = dims.get("rhs_contracting", [])
  rhs_b = dims.get("rhs_batch", [])
  rt = "N" if rhs_c and rhs_c[0] == len(rhs_b) else "T"
  batch = "batched " if dims.get("lhs_batch") else ""
  return f"{batch}dot {lt}{rt} k={k} -> {out}", 2.0 * n_out * k


def hlo_ops(hlo_text: str) -> dict[str, Op]:
  """instruction name -> ``Op`` for every instruction of an optimized HLO module."""
  computations: dict[str, list[tuple[str, str, str, str]]] = {}
  current = None
  for line in hlo_text.splitlines():
    m = _COMP.match(line)
    if m:
      current = computations.setdefault(m.group(1), [])
      continue
    m = _INSTR.match(line)
    if m and current is not None:
      current.append(m.groups())
  shapes = {name: shape for body in computations.values() for name, shape, _, _ in body}

  def inside(comp: str, seen=()) -> list[tuple[str, str, str, str]]:
    out = []
    for instr in computations.get(comp, []):
      out.append(instr)
      for callee in _CALLS.findall(instr[3]):
        if callee not in seen:
          out += inside(callee, (*seen, callee))
    return out

  fused = {  # bodies of fusions and reducers: their instructions never run as thunks
    callee
    for body in computations.values()
    for _, _, opcode, rest in body
    if opcode != "while"
    for callee in _CALLS.findall(rest)
  }
  ops = {}
  for comp, body in computations.items():
    if comp in fused:
      continue
    for name, shape, opcode, rest in body:
      body_ops = (
        inside(_CALLS.findall(rest)[0]) if opcode == "fusion" and _CALLS.findall(rest) else []
      )
      kinds = [o for _, _, o, _ in body_ops] or [opcode]
      dots = [b for b in body_ops if b[2] == "dot"] or (
        [(name, shape, opcode, rest)] if opcode == "dot" else []
      )
      convs = [b for b in body_ops if b[2] == "convolution"] or (
        [(name, shape, opcode, rest)] if opcode == "convolution" else []
      )
      if dots:
        detail, flops = _dot(dots[0][3], shapes, dots[0][1])
        ops[name] = Op("dot", shape, detail, flops)
      elif convs:
        args = re.findall(r"%([\w.\-]+)", convs[0][3].split(")", 1)[0])
        kernel = shapes.get(args[1], "?") if len(args) > 1 else "?"
        window = re.search(r"window=\{size=([\dx]+)", convs[0][3])
        size = 1
        for d in window.group(1).split("x") if window else []:
          size *= int(d)
        k_dims = _shape_dims(kernel)
        out_n = 1
        for d in _shape_dims(convs[0][1]):
          out_n *= d
        cin = k_dims[-2] if len(k_dims) >= 2 else 1
        flops = 2.0 * out_n * size * cin
        ops[name] = Op("convolution", shape, f"conv kernel {kernel} -> {convs[0][1]}", flops)
      elif opcode in ("while", "conditional", "call"):
        ops[name] = Op("loop / call", shape, opcode, 0.0)
      elif any(k in ("scatter", "gather", "dynamic-update-slice", "dynamic-slice") for k in kinds):
        kind = next(
          k for k in kinds if k in ("scatter", "gather", "dynamic-update-slice", "dynamic-slice")
        )
        ops[name] = Op("scatter / gather / slice", shape, kind, 0.0)
      elif any(k in ("reduce", "reduce-window") for k in kinds):
        ops[name] = Op(
          "reduce", shape, "+".join(sorted(set(kinds) - {"parameter", "constant"}))[:60], 0.0
        )
      elif set(kinds) <= {"copy", "transpose", "bitcast", "parameter", "reshape", "broadcast"}:
        ops[name] = Op("copy / transpose", shape, "+".join(sorted(set(kinds) - {"parameter"})), 0.0)
      else:
        detail = "+".join(sorted(set(kinds) - {"parameter", "constant", "bitcast", "broadcast"}))
        ops[name] = Op("elementwise", shape, detail[:60], 0.0)
  return ops


def _self_times(events, known) -> collections.Counter:
  """Self time (ns) per known op name on one thread: duration less nested known ops."""
  out = collections.Counter()
  stack: list[list] = []  # [name, end_ns, child_ns]
  for start, dur, name in sorted(events):
    while stack and start >= stack[-1][1]:
      n, _, child = stack.pop()
      out[n] -= child
    if name not in known:
      continue
    out[name] += dur
    if stack:
      stack[-1][2] += dur
    stack.append([name, start + dur, 0.0])
  for n, _, child in stack:
    out[n] -= child
  return out


def measure(step, hlo_text: str, *, steps: int = 3, trace_dir: str | None = None):
  """Run ``step()`` ``steps`` times under the profiler; returns ``(ops, self_ns, count)``.

  ``step`` must block until its results are ready (e.g. end in ``block_until_ready``).
  ``self_ns[name]`` is the op's self time summed over the steps and threads; ``count[name]``
  how many times it ran.
  """
  ops = hlo_ops(hlo_text)
  trace_dir = trace_dir or tempfile.mkdtemp(prefix="normjax_profile_")
  jax.profiler.start_trace(trace_dir)
  try:
    for _ in range(steps):
      step()
  finally:
    jax.profiler.stop_trace()
  path = max(
    glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True), key=os.path.getmtime
  )
  data = jax.profiler.ProfileData.from_file(path)
  self_ns, count = collections.Counter(), collections.Counter()
  for plane in data.planes:
    for line in plane.lines:
      events = [(e.start_ns, e.duration_ns, e.name) for e in line.events]
      self_ns.update(_self_times(events, ops))
      count.update(name for _, _, name in events if name in ops)
  return ops, self_ns, count


def table(
  measured, *, steps: int, wall_s: float | None = None, top: int = 25, per_category: int = 5
) -> str:
  """Markdown: time per category, the ``top`` ops by self time (per step), then the
  ``per_category`` largest ops of each category that has none among them."""
  ops, self_ns, count = measured
  total = sum(self_ns.values()) or 1.0
  by_cat = collections.defaultdict(lambda: [0.0, 0, 0.0])
  for name, ns in self_ns.items():
    cat = by_cat[ops[name].category]
    cat[0] += ns
    cat[1] += count[name]
    cat[2] += ops[name].flops * count[name]
  lines = [
    f"sum of op self times {total / steps / 1e6:.1f} ms/step"
    + (f", wall {wall_s * 1e3:.1f} ms/step" if wall_s else ""),
    "",
    "| category | ms/step | share | ops/step | GFLOP/s |",
    "|---|---|---|---|---|",
  ]
  for cat, (ns, n, flops) in sorted(by_cat.items(), key=lambda kv: -kv[1][0]):
    rate = f"{flops / ns:.1f}" if flops and ns > 0 else ""
    lines.append(f"| {cat} | {ns / steps / 1e6:.2f} | {ns / total:.1%} | {n // steps} | {rate} |")
  lines += [
    "",
    "| op | category | ms/step | share | GFLOP/s | computes |",
    "|---|---|---|---|---|---|",
  ]
  shown = [name for name, _ in self_ns.most_common(top)]
  seen = {ops[name].category for name in shown}
  for cat in sorted(set(by_cat) - seen, key=lambda c: -by_cat[c][0]):
    shown += [n for n, _ in self_ns.most_common() if ops[n].category == cat][:per_category]
  for name in shown:
    ns, op = self_ns[name], ops[name]
    rate = f"{op.flops * count[name] / ns:.1f}" if op.flops and ns > 0 else ""
    share = f"{ns / steps / 1e6:.2f} | {ns / total:.1%}"
    lines.append(f"| {name} | {op.category} | {share} | {rate} | {op.detail} |")
  return "\n".join(lines)
