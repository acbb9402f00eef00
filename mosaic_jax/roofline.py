"""A roofline of a compiled program, read from its optimized HLO: where the time must go.

Without a GPU to time a step, the compiled program still says what the hardware must do:
each kernel XLA launches (a fusion, a copy, a Pallas custom call) reads and writes known
buffers and does a known number of matrix FLOPs, so no schedule can run it faster than
``max(flops / peak FLOP/s, bytes / memory bandwidth)``. Summed over kernels this is a lower
bound on the step's time, and the split shows what holds it back: matrix work, attention
kernels, or memory-bound elementwise fusions (norms, activations, casts, gathers) that a
better fusion or layout could remove. It is the same first-order model XLA's own GPU cost
model uses to choose fusions.

What is counted, per top-level instruction of the entry computation (a ``while`` body times
its ``known_trip_count``):

* FLOPs: the ``dot`` and ``convolution`` instructions inside it, 2 per multiply-add.
  Elementwise arithmetic is not counted (memory bound on a GPU at these sizes).
* bytes: every operand plus the output, once, as if nothing were reused through L2 or
  shared memory between kernels. A fusion parameter that is only sliced (``slice``,
  ``dynamic-slice``, ``gather``) counts the slices' bytes.
* a custom call (a Pallas kernel) counts its operands and outputs; its FLOPs are opaque in
  HLO and come from the caller: ``custom_call_flops(instruction, operand_shapes)``.

Bitcasts, tuples, parameters and constants move nothing. In-place updates are counted as a
full read and write, so memory time is an upper estimate for them.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections import defaultdict
from collections.abc import Callable, Iterable

_DTYPE_BYTES = {
    "pred": 1, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "s32": 4, "u32": 4, "s64": 8, "u64": 8,
    "f16": 2, "bf16": 2, "f32": 4, "f64": 8, "c64": 8, "c128": 16,
    "f8e4m3fn": 1, "f8e5m2": 1, "f8e4m3": 1, "f8e5m2fnuz": 1, "f8e4m3fnuz": 1, "f8e4m3b11fnuz": 1,
}
_ARRAY = re.compile(r"\b(" + "|".join(sorted(_DTYPE_BYTES, key=len, reverse=True)) + r")\[([0-9,]*)\]")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%(?P<name>[\w.\-]+) = (?P<shape>.+?) (?P<opcode>[a-z][a-z0-9\-]*)\((?P<rest>.*)$")
_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%(?P<name>[\w.\-]+) \(.*\{\s*$")
_OPERAND = re.compile(r"%([\w.\-]+)")
_CALLS = re.compile(r"\b(?:calls|body|to_apply|condition)=%([\w.\-]+)")
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_TRIP_COUNT = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')
_CONTRACTING = re.compile(r"lhs_contracting_dims=\{([0-9,]*)\}")
_FREE_OPCODES = frozenset({"parameter", "constant", "bitcast", "get-tuple-element", "tuple", "after-all",
                           "partition-id", "replica-id", "iota", "opt-barrier"})
_SLICING_OPCODES = frozenset({"slice", "dynamic-slice", "gather"})


def shape_dims(shape: str) -> list[tuple[str, tuple[int, ...]]]:
    """The arrays of an HLO shape string (a tuple shape gives several): (dtype, dims)."""
    return [(dt, tuple(int(d) for d in dims.split(",") if d)) for dt, dims in _ARRAY.findall(shape)]


def shape_bytes(shape: str) -> float:
    """Bytes of an HLO shape string (all elements of a tuple)."""
    return float(sum(_DTYPE_BYTES[dt] * math.prod(dims) for dt, dims in shape_dims(shape)))


@dataclasses.dataclass(frozen=True)
class Instruction:
    name: str
    shape: str
    opcode: str
    operands: tuple[str, ...]
    attributes: str
    parameter_number: int | None = None  # ``parameter(N)``

    @property
    def called(self) -> tuple[str, ...]:
        names = _CALLS.findall(self.attributes)
        for group in _BRANCHES.findall(self.attributes):
            names += _OPERAND.findall(group)
        return tuple(names)

    @property
    def op_name(self) -> str:
        m = _OP_NAME.search(self.attributes)
        return m.group(1) if m else ""


def _split_operands(rest: str) -> tuple[str, str]:
    """``rest`` after ``opcode(``: the operand list and the attributes after its closing paren."""
    depth = 1
    for i, ch in enumerate(rest):
        if ch in "({":
            depth += 1
        elif ch in ")}":
            depth -= 1
            if depth == 0:
                return rest[:i], rest[i + 1:]
    return rest, ""


def parse_hlo(text: str) -> tuple[dict[str, list[Instruction]], str]:
    """Computations of an HLO module's text (``compiled.as_text()``) and the entry's name."""
    computations: dict[str, list[Instruction]] = {}
    entry = ""
    current: list[Instruction] | None = None
    for line in text.splitlines():
        header = _COMPUTATION.match(line)
        if header:
            current = computations.setdefault(header.group("name"), [])
            if line.startswith("ENTRY"):
                entry = header.group("name")
            continue
        if line.startswith("}"):
            current = None
            continue
        if current is None:
            continue
        m = _INSTRUCTION.match(line)
        if m:
            operands, attributes = _split_operands(m.group("rest"))
            number = int(operands) if m.group("opcode") == "parameter" else None
            current.append(Instruction(m.group("name"), m.group("shape"), m.group("opcode"),
                                       tuple(_OPERAND.findall(operands)), attributes, number))
    if not entry:
        raise ValueError("no ENTRY computation in the HLO text")
    return computations, entry


@dataclasses.dataclass(frozen=True)
class OpCost:
    """One launched kernel of the compiled program: its FLOPs and bytes, times ``count``."""

    name: str
    opcode: str
    category: str  # "matmul", "custom-call", "memory" or "collective"
    op_name: str
    shape: str
    flops: float
    bytes: float
    count: int = 1

    def seconds(self, peak_flops: float, bandwidth: float) -> float:
        """The op's roofline time: it can run no faster than its matrix work or its memory traffic."""
        return self.count * max(self.flops / peak_flops, self.bytes / bandwidth)


CustomCallFlops = Callable[[Instruction, list[str]], float]


class _Costing:
    """Walks an HLO module's computations; instruction names are unique module-wide, so one
    name -> shape table serves every computation."""

    def __init__(self, computations: dict[str, list[Instruction]], custom_call_flops: CustomCallFlops | None):
        self.computations = computations
        self.custom_call_flops = custom_call_flops
        self.shapes = {i.name: i.shape for body in computations.values() for i in body}

    def matrix_flops(self, computation: str) -> float:
        """dot and convolution FLOPs inside a computation, nested fusions and loops included."""
        total = 0.0
        for ins in self.computations.get(computation, []):
            total += self.instruction_flops(ins)
            if ins.opcode in ("fusion", "call", "async-start"):
                total += sum(self.matrix_flops(c) for c in ins.called)
        return total

    def instruction_flops(self, ins: Instruction) -> float:
        if ins.opcode == "dot":
            lhs = shape_dims(self.shapes[ins.operands[0]])[0][1]
            m = _CONTRACTING.search(ins.attributes)
            contract = math.prod(lhs[int(i)] for i in m.group(1).split(",") if i) if m else 1
            return 2.0 * math.prod(shape_dims(ins.shape)[0][1]) * contract
        if ins.opcode == "convolution":
            # output elements x (kernel elements / output features): one MAC per kernel tap and input feature.
            kernel = shape_dims(self.shapes[ins.operands[1]])[0][1]
            out = shape_dims(ins.shape)[0][1]
            dim_labels = re.search(r"dim_labels=\w+_(\w+)->", ins.attributes)
            out_features = kernel[dim_labels.group(1).index("o")] if dim_labels else 1
            return 2.0 * math.prod(out) * math.prod(kernel) / out_features
        return 0.0

    def fusion_bytes(self, ins: Instruction) -> float:
        """Operands (sliced parameters at their slices' size) plus the output."""
        body = self.computations.get(ins.called[0], []) if ins.called else []
        params = {i.name: i.parameter_number for i in body if i.opcode == "parameter"}
        users: dict[str, list[Instruction]] = defaultdict(list)
        for i in body:
            for op in i.operands:
                users[op].append(i)
        read = [shape_bytes(self.shapes[o]) for o in ins.operands]
        for pname, index in params.items():
            uses = users.get(pname, [])
            if uses and all(u.opcode in _SLICING_OPCODES and u.operands[0] == pname for u in uses):
                read[index] = min(read[index], sum(shape_bytes(u.shape) for u in uses))
        return sum(read) + shape_bytes(ins.shape)

    def op_name(self, ins: Instruction) -> str:
        """``ins``'s op_name; for a fusion whose root has none (XLA drops it on ops it rewrites,
        such as a reduction of a product), the name of the fused op nearest its root."""
        if ins.op_name or ins.opcode != "fusion" or not ins.called:
            return ins.op_name
        return next((i.op_name for i in reversed(self.computations.get(ins.called[0], [])) if i.op_name), "")

    def costs(self, computation: str, count: int = 1) -> list[OpCost]:
        out: list[OpCost] = []
        for ins in self.computations[computation]:
            if ins.opcode in _FREE_OPCODES:
                continue
            if ins.opcode == "while":
                trips = _TRIP_COUNT.search(ins.attributes)
                body = re.search(r"\bbody=%([\w.\-]+)", ins.attributes)
                if trips is None:
                    raise ValueError(f"while loop {ins.name} has no known trip count; its cost is unbounded here")
                out += self.costs(body.group(1), count * int(trips.group(1)))
                continue
            if ins.opcode in ("call", "conditional"):
                branches = [self.costs(c, count) for c in ins.called]
                if ins.opcode == "call":
                    out += [c for b in branches for c in b]
                elif branches:  # the costliest branch: most FLOPs, then most bytes
                    out += max(branches, key=lambda b: (sum(c.flops for c in b), sum(c.bytes for c in b)))
                continue
            if ins.opcode == "fusion":
                flops = self.matrix_flops(ins.called[0])
                category = "matmul" if flops else "memory"
                nbytes = self.fusion_bytes(ins)
            elif ins.opcode == "custom-call":
                operand_shapes = [self.shapes[o] for o in ins.operands]
                flops = self.custom_call_flops(ins, operand_shapes) if self.custom_call_flops else 0.0
                category = "custom-call"
                nbytes = sum(shape_bytes(self.shapes[o]) for o in ins.operands) + shape_bytes(ins.shape)
            else:
                flops = self.instruction_flops(ins)
                category = ("collective" if ins.opcode.startswith(("all-", "reduce-scatter", "collective-"))
                            else "matmul" if flops else "memory")
                nbytes = sum(shape_bytes(self.shapes[o]) for o in ins.operands) + shape_bytes(ins.shape)
            out.append(OpCost(ins.name, ins.opcode, category, self.op_name(ins), ins.shape.split("{")[0], flops, nbytes,
                              count))
        return out



def op_costs(hlo_text: str, custom_call_flops: CustomCallFlops | None = None) -> list[OpCost]:
    """Every kernel the compiled program launches, with its FLOPs and bytes (module docstring)."""
    computations, entry = parse_hlo(hlo_text)
    return _Costing(computations, custom_call_flops).costs(entry)


@dataclasses.dataclass(frozen=True)
class CategoryTotal:
    ops: int
    flops: float
    bytes: float
    seconds: float  # sum of the ops' roofline times
    memory_bound_seconds: float  # of which in ops whose memory time exceeds their matrix time


def summarize(costs: Iterable[OpCost], peak_flops: float, bandwidth: float) -> dict[str, CategoryTotal]:
    """Roofline totals per category, and ``"total"``."""
    acc: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0.0, 0.0, 0.0])
    for c in costs:
        t = c.seconds(peak_flops, bandwidth)
        memory_bound = c.bytes / bandwidth > c.flops / peak_flops
        for key in (c.category, "total"):
            a = acc[key]
            a[0] += c.count
            a[1] += c.count * c.flops
            a[2] += c.count * c.bytes
            a[3] += t
            a[4] += t if memory_bound else 0.0
    return {k: CategoryTotal(int(a[0]), a[1], a[2], a[3], a[4]) for k, a in acc.items()}


# Path components that name a transformation or a control-flow wrapper, not a model module.
_WRAPPERS = frozenset({"while", "body", "cond", "eval_jaxpr", "Mosaic", "checkpoint", "remat", "rematted_computation",
                       "closed_call", "core_call"})


def module_path(op_name: str, depth: int = 3) -> str:
    """The model path an op came from, from its ``op_name`` metadata.

    ``jit(step)/Mosaic/encoder_stages_0/blocks_1/ffn/mul`` -> ``encoder_stages_*/blocks_*/ffn`` at
    depth 3: transformations (``jit(...)``, ``jvp()``), loop wrappers and the primitive are
    dropped, numbered parts collapse (``blocks_*``) so repeated blocks group together, and a
    scope repeated by rematerialisation counts once. Ops of
    a gradient's backward pass (under ``transpose(...)``) are prefixed ``backward: ``; ops outside
    any module (loss, optimizer) are ``(no module)``.
    """
    parts = op_name.split("/")
    phase = "backward: " if any(p.startswith("transpose(") for p in parts) else ""
    kept: list[str] = []
    for p in parts[:-1]:
        p = re.sub(r"_\d+$", "_*", p)
        if p and "(" not in p and p not in _WRAPPERS and (not kept or kept[-1] != p):  # remat repeats a scope
            kept.append(p)
    return phase + ("/".join(kept[:depth]) or "(no module)")
