"""Activation constraints read the mesh entered with jax.set_mesh and the rules entered inside the traced body."""

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from rq_jax import sharding


def test_rules_entered_in_the_body_are_part_of_the_trace():
    mesh = sharding.mesh_from_config({"data": 2, "fsdp": 2, "tensor": 2}, devices=jax.devices()[:8])
    x = jnp.ones((8, 6, 4))

    def step(a, *, rules):
        with sharding.axis_rules(rules):
            return sharding.constrain(a * 2, "batch", None, "heads")

    default = jax.jit(lambda a: step(a, rules=sharding.DEFAULT_RULES))
    no_heads = jax.jit(lambda a: step(a, rules=(("batch", "data"), ("heads", None))))
    with jax.set_mesh(mesh):
        assert default(x).sharding.spec == P(("data", "fsdp"), None, "tensor")
        assert no_heads(x).sharding.spec == P("data")
        # a mesh axis that does not divide the dimension is dropped (replicated), not an error
        assert default(jnp.ones((8, 6, 3))).sharding.spec == P(("data", "fsdp"))
    assert len(default(x).sharding.device_set) == 1  # no mesh: no constraint, one device
