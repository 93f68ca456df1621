"""Stage-1 loss terms as pure functions over arrays (the trainer composes them with the models).

The official RQ-VAE generator objective (after taming-transformers' VQGAN) is
  recon + latent + p_w * lpips + adaptive_generator_weight(...) * disc_weight * factor * generator_adv_loss
and the discriminator's is disc_weight * factor * hinge_d_loss (or vanilla_d_loss), where
factor = discriminator_factor(step, start_step). Every loss is a float32 scalar (mean reduction).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

RECONSTRUCTION_KINDS = ("l1", "l2")


def _f32(x: jax.Array) -> jax.Array:
    return jnp.asarray(x).astype(jnp.float32)


def reconstruction_loss(x: jax.Array, x_rec: jax.Array, kind: str = "l1") -> jax.Array:
    """Mean absolute ("l1") or mean squared ("l2", the official `loss_type: mse`) error over all elements."""
    diff = _f32(x_rec) - _f32(x)
    if kind == "l1":
        return jnp.mean(jnp.abs(diff))
    if kind == "l2":
        return jnp.mean(jnp.square(diff))
    raise ValueError(f"Unknown reconstruction loss {kind!r}; choose one of {', '.join(RECONSTRUCTION_KINDS)}.")


def hinge_d_loss(logits_real: jax.Array, logits_fake: jax.Array) -> jax.Array:
    """Discriminator hinge loss: 0.5 * (mean(relu(1 - real)) + mean(relu(1 + fake)))."""
    loss_real = jnp.mean(jax.nn.relu(1.0 - _f32(logits_real)))
    loss_fake = jnp.mean(jax.nn.relu(1.0 + _f32(logits_fake)))
    return 0.5 * (loss_real + loss_fake)


def vanilla_d_loss(logits_real: jax.Array, logits_fake: jax.Array) -> jax.Array:
    """Discriminator non-saturating (logistic) loss: 0.5 * (mean(softplus(-real)) + mean(softplus(fake)))."""
    loss_real = jnp.mean(jax.nn.softplus(-_f32(logits_real)))
    loss_fake = jnp.mean(jax.nn.softplus(_f32(logits_fake)))
    return 0.5 * (loss_real + loss_fake)


def generator_adv_loss(logits_fake: jax.Array) -> jax.Array:
    """Generator adversarial loss -mean(logits_fake) (the official `vanilla_g_loss`)."""
    return -jnp.mean(_f32(logits_fake))


def _global_norm(tree: Any) -> jax.Array:
    """Frobenius norm over all leaves of a pytree (a single array is a one-leaf pytree)."""
    leaves = jax.tree_util.tree_leaves(tree)
    return jnp.sqrt(sum(jnp.sum(jnp.square(_f32(leaf))) for leaf in leaves))


def adaptive_generator_weight(
    nll_grads_last_layer: Any,
    g_grads_last_layer: Any,
    *,
    max_weight: float = 1e4,
    eps: float = 1e-4,
) -> jax.Array:
    """VQGAN's adaptive weight ||grad nll|| / (||grad g|| + eps), clipped to [0, max_weight], gradient-stopped.

    Both arguments are the gradients of the reconstruction(+perceptual) loss and of the generator
    adversarial loss w.r.t. the decoder's last layer (officially its conv weight only); pytrees are
    reduced to one global norm. The result balances the two terms and is treated as a constant.
    """
    weight = _global_norm(nll_grads_last_layer) / (_global_norm(g_grads_last_layer) + eps)
    return jax.lax.stop_gradient(jnp.clip(weight, 0.0, max_weight))


def discriminator_factor(step: jax.Array | int, start_step: jax.Array | int, *, factor: float = 1.0
                         ) -> jax.Array:
    """`factor` once step >= start_step, else 0 (taming's `adopt_weight`); works on traced steps."""
    return jnp.where(jnp.asarray(step) >= start_step, jnp.float32(factor), jnp.float32(0.0))
