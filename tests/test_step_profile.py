"""xformer_jax/plan/profile.py (benchmarks/profile.py's analysis): matmul FLOPs read from compiled HLO,
passes from op names, a traced run."""
import jax
import jax.numpy as jnp

from xformer_jax.plan import profile


def test_matmul_flops_and_time_of_a_traced_function():
    f = jax.jit(lambda x, w: jnp.tanh(x @ w) * 2.0)
    x, w = jnp.ones((64, 32)), jnp.ones((32, 16))
    hlo = f.lower(x, w).compile().as_text()
    instructions, computations = profile.parse_hlo(hlo)
    flops = {name: profile.op_matmul_flops(instructions, computations, name) for name in instructions}
    assert max(flops.values()) == 2 * 64 * 32 * 16

    seconds = profile.trace_ops(lambda: f(x, w).block_until_ready(), steps=3)
    result = profile.summarise(seconds, hlo, step_s=1e-3, top=5)
    # every matmul op the trace saw is the one dot, once per call
    assert result["matmul"]["gflop"] == 2 * 64 * 32 * 16 / 1e9
    assert result["matmul"]["ms"] > 0 and result["other_ms"] >= 0 and 0 < result["matmul"]["share"] <= 1
    assert {op["op"] for op in result["top_ops"]} <= set(instructions)


def test_pass_and_direction_come_from_op_names():
    prefix = "jit(step)/transpose(jvp(Stage1Model))/Stage1Model.itm_logits/qformer.joint_pass/layer_0/"
    assert profile.pass_of(prefix + "attention/dot_general") == ("itm", "backward")
    assert profile.pass_of("jit(step)/jvp(Stage1Model)/qformer.lm_logits/lm_head/add") == ("lm_head", "forward")
    assert profile.pass_of("jit(step)/jvp(Stage1Model)/qformer.decoder_hidden/x") == ("itg_text", "forward")
    assert profile.pass_of("jit(step)/add") == ("optimizer", "update")
