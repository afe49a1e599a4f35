"""Where a compiled step's time goes: XLA's trace of it joined with its HLO.

  parse_hlo / op_matmul_flops  instructions of compiled HLO text and the matmul / convolution FLOPs of one
                               executed op (a step's FLOPs are plan/flops.py's, counted on the jaxpr; these
                               only attribute them to the ops a trace times)
  pass_of                      which pass (ITM, ITG text, towers, ...) and direction an op's op_name is from
  trace_ops / summarise        per-op seconds from jax.profiler, then time by op kind and pass
benchmarks/step_profile.py and benchmarks/gpu_report.py print what these measure.
"""
import collections
import math
import os
import re
import tempfile

import jax

# op_name fragments -> pass, first match wins (the model's method names, see models/xformer.py)
PASSES = (("itm_logits", "itm"), ("lm_logits", "lm_head"), ("decoder_hidden", "itg_text"),
          ("encode_text", "itc_text"), ("_finish", "fusion"), ("reconstruct", "mae_decoder"),
          ("query_pass", "image_queries"), ("query_states", "image_queries"), ("encode_images", "towers"))
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (.*?) ([a-z][\w\-]*)\((.*)$")
_ARRAY = re.compile(r"^\w+\[([\d,]*)\]")


def parse_hlo(text: str) -> tuple[dict, dict]:
    """(instructions name -> (shape, opcode, rest of line), computations name -> instruction names)."""
    instructions, computations, current = {}, {}, None
    for line in text.splitlines():
        if line and not line.startswith(" ") and line.rstrip().endswith("{"):
            current = line.split()[1 if line.startswith("ENTRY") else 0].lstrip("%")
            computations[current] = []
            continue
        match = _INSTRUCTION.match(line)
        if match and current is not None:
            name, shape, opcode, rest = match.groups()
            array = _ARRAY.match(shape)  # tuple-shaped results have no dims of their own
            instructions[name] = ([int(d) for d in array.group(1).split(",") if d] if array else [], opcode, rest)
            computations[current].append(name)
    return instructions, computations


def dot_flops(instructions: dict, name: str) -> float:
    """2 * output elements * contracted size of one dot instruction."""
    shape, _, rest = instructions[name]
    lhs = instructions.get(rest.split(",")[0].strip().split()[-1].lstrip("%"))
    contracting = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", rest)
    contracted = math.prod(lhs[0][int(d)] for d in contracting.group(1).split(",") if d) if lhs and contracting else 1
    return 2.0 * math.prod(shape) * contracted


def conv_flops(instructions: dict, name: str) -> float:
    """2 * output elements * kernel elements per output feature of one convolution instruction."""
    shape, _, rest = instructions[name]
    kernel = instructions.get(rest.split(",")[1].strip().split()[-1].lstrip("%").rstrip(")"))
    labels = re.search(r"dim_labels=\w+_(\w+)->", rest)
    if not kernel or not labels:
        return 0.0
    return 2.0 * math.prod(shape) * math.prod(kernel[0]) / kernel[0][labels.group(1).index("o")]


MATMUL_OPS = {"dot": dot_flops, "convolution": conv_flops}


def op_matmul_flops(instructions: dict, computations: dict, name: str) -> float:
    """FLOPs of the dots and convolutions an executed op runs (itself, or inside the computation a fusion
    calls); 0: none."""
    _, opcode, rest = instructions[name]
    if opcode in MATMUL_OPS:
        return MATMUL_OPS[opcode](instructions, name)
    called = re.search(r"calls=%([\w.\-]+)", rest)
    if opcode != "fusion" or not called:
        return 0.0
    inner = [i for i in computations.get(called.group(1), ()) if instructions[i][1] in MATMUL_OPS]
    return sum(MATMUL_OPS[instructions[i][1]](instructions, i) for i in inner)


def pass_of(op_name: str) -> tuple[str, str]:
    """(pass, "forward" / "backward" / "update") of an op from its op_name metadata."""
    if "jvp(" not in op_name:
        return "optimizer", "update"
    direction = "backward" if "transpose(jvp(" in op_name else "forward"
    return next((label for key, label in PASSES if key in op_name), "other"), direction


def trace_ops(step, steps: int) -> dict:
    """Per-op seconds per step (op name -> s) over `steps` traced steps."""
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir):
            for _ in range(steps):
                step()
        paths = [os.path.join(root, f) for root, _, files in os.walk(trace_dir) for f in files
                 if f.endswith(".xplane.pb")]
        if not paths:
            raise RuntimeError(f"jax.profiler wrote no .xplane.pb under {trace_dir}")
        data = jax.profiler.ProfileData.from_file(paths[0])
    seconds = collections.Counter()
    for plane in data.planes:
        for line in plane.lines:
            for event in line.events:
                seconds[event.name] += event.duration_ns / 1e9 / steps
    return seconds


def summarise(seconds: dict, hlo: str, step_s: float, top: int) -> dict:
    instructions, computations = parse_hlo(hlo)
    by_pass = collections.defaultdict(lambda: collections.Counter())
    matmul_s = matmul_flop = other_s = 0.0
    ops = []
    for name, s in seconds.items():
        if name not in instructions:  # runtime events (executor, python), not ops of the step
            continue
        metadata = re.search(r'op_name="([^"]*)"', instructions[name][2])
        label, direction = pass_of(metadata.group(1) if metadata else "")
        flops = op_matmul_flops(instructions, computations, name)
        kind = "matmul" if flops else "other"
        by_pass[label][f"{kind}_ms"] += 1e3 * s
        by_pass[label][f"{direction}_ms"] += 1e3 * s
        if flops:
            matmul_s, matmul_flop = matmul_s + s, matmul_flop + flops
        else:
            other_s += s
        ops.append({"op": name, "ms": round(1e3 * s, 3), "pass": label, "direction": direction,
                    "gflop_per_s": round(flops / s / 1e9, 1) if flops else None})
    ops.sort(key=lambda o: -o["ms"])
    total = matmul_s + other_s
    return {"step_s": step_s, "traced_ops_s": total,
            "matmul": {"ms": 1e3 * matmul_s, "gflop": matmul_flop / 1e9,
                       "gflop_per_s": matmul_flop / matmul_s / 1e9 if matmul_s else None,
                       "share": matmul_s / total if total else None},
            "other_ms": 1e3 * other_s,
            "by_pass": {k: {m: round(v, 1) for m, v in c.items()}
                        for k, c in sorted(by_pass.items(), key=lambda kv: -sum(kv[1].values()))},
            "top_ops": ops[:top]}
