"""Hand-written kernels (Pallas) with plain-jnp references beside them."""
