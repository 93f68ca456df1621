"""Loading trained runs: a stage-1 RQ-VAE, a stage-2 RQ-Transformer, and the stage-1 run that decodes it.

A run is a workdir with `config.json` and orbax checkpoints, written by `python -m rq_jax.train` or
`python -m rq_jax.convert official`. Models are built abstractly (no random initialisation) and filled
from the checkpoint. Used by the command lines (sample, extract, evaluate), the notebook and the
stage-2 trainer (its sample grids); it never imports a trainer.
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple

import jax
import ml_collections
from flax import nnx

from rq_jax import checkpoints
from rq_jax.models.abstract import abstract_module
from rq_jax.models.rq_transformer import RQTransformer
from rq_jax.models.rqvae import RQVAE, CodebookVar


def abstract_rqvae(config: ml_collections.ConfigDict) -> RQVAE:
    """The stage-1 model of a run config, abstract (shapes and dtypes only, no random initialisation)."""
    return abstract_module(lambda rngs: RQVAE(config.model, rngs=rngs))


def abstract_rq_transformer(config: ml_collections.ConfigDict) -> RQTransformer:
    """The stage-2 model of a run config, abstract (shapes and dtypes only)."""
    return abstract_module(lambda rngs: RQTransformer(config.model, rngs=rngs))


def _rqvae_parts(workdir: str, abstract: RQVAE | None):
    """(config, graph, abstract generator params, abstract codebook) of a stage-1 run."""
    config = checkpoints.read_run_config(workdir, "rqvae", "stage-1")
    return config, *nnx.split(abstract or abstract_rqvae(config), nnx.Param, CodebookVar)


def load_rqvae(workdir: str, step: int | None = None, *, abstract: RQVAE | None = None,
               ) -> tuple[RQVAE, ml_collections.ConfigDict, int]:
    """The RQ-VAE (with its codebook) of a stage-1 run directory, at `step` (default: the latest).

    Reads `<workdir>/config.json` and restores only the generator and codebook from the checkpoint,
    without random initialisation (the model is built abstractly, or given as `abstract`, and filled from
    the checkpoint).
    """
    config, graph, params, codebook = _rqvae_parts(workdir, abstract)
    parts, step = checkpoints.restore_parts(workdir, {"gen": params, "codebook": codebook}, step)
    return nnx.merge(graph, parts["gen"], parts["codebook"]), config, step


def load_rqvae_codebook(workdir: str, step: int | None = None, *, abstract: RQVAE | None = None,
                        ) -> tuple[jax.Array, int]:
    """(The codebook [K, C] of a stage-1 run, its step): what a sampler needs of stage 1, read alone (K x C
    floats), so sampling can start before the rest of the RQ-VAE is read."""
    _, graph, params, codebook = _rqvae_parts(workdir, abstract)
    parts, step = checkpoints.restore_parts(workdir, {"codebook": codebook}, step)
    return nnx.merge(graph, params, parts["codebook"]).codebook_state.embedding_KxC, step


def _stage2_config(workdir: str) -> ml_collections.ConfigDict:
    return checkpoints.read_run_config(
        workdir, "rq_transformer", "stage-2", " (sampling needs the stage-2 workdir; the stage-1 one is found from it)"
    )


def load_rq_transformer(workdir: str, step: int | None = None, *, abstract: RQTransformer | None = None,
                        ) -> tuple[RQTransformer, ml_collections.ConfigDict, int]:
    """The RQ-Transformer of a stage-2 run directory (abstract build, or `abstract`, filled from the checkpoint)."""
    config = _stage2_config(workdir)
    graph, params = nnx.split(abstract or abstract_rq_transformer(config))
    parts, step = checkpoints.restore_parts(workdir, {"params": params}, step)
    return nnx.merge(graph, parts["params"]), config, step


class Stage2Run(NamedTuple):
    """A trained stage-2 model with the stage-1 model that decodes its codes."""

    model: Any  # RQTransformer
    config: ml_collections.ConfigDict
    step: int
    decoder: Any  # RQVAE
    rqvae_workdir: str
    meta: dict  # the feature directory's meta.json ({} when unavailable, e.g. converted checkpoints)


class Stage2Plan(NamedTuple):
    """What a stage-2 run will load, known before any weight is read: its configs and abstract models.

    A command can compile its programs from these (shapes only) while `load_stage2(..., plan=plan)` reads
    the checkpoints (`python -m rq_jax.sample` does)."""

    workdir: str
    config: ml_collections.ConfigDict
    model: Any  # abstract RQTransformer
    rqvae_workdir: str
    rqvae_config: ml_collections.ConfigDict
    decoder: Any  # abstract RQVAE
    meta: dict


def check_stages_match(rqvae_config: ml_collections.ConfigDict, code_shape: tuple[int, ...], vocab_size: int,
                       rqvae_workdir: str) -> None:
    """Raises ValueError unless the stage-1 run's code shape and codebook size are the transformer's."""
    have = (tuple(rqvae_config.model.code_shape), int(rqvae_config.model.codebook_size))
    if have != (tuple(code_shape), int(vocab_size)):
        raise ValueError(
            f"The RQ-VAE in {rqvae_workdir} has code shape {have[0]} and K={have[1]}, but the transformer expects "
            f"{tuple(code_shape)} and K={vocab_size}; pass the stage-1 run it was trained on with --rqvae."
        )


def plan_stage2(workdir: str, rqvae: str | None = None) -> Stage2Plan:
    """The configs and abstract models of a stage-2 run and its stage-1 run, checked to match; reads no weights.

    The stage-1 run is `rqvae` if given, else the stage-2 config's `rqvae_workdir`, else the one named by
    the features' meta.json.
    """
    from rq_jax.data.features import load_meta

    if not os.path.isdir(workdir):
        raise FileNotFoundError(f"The workdir {workdir!r} does not exist; give the --workdir of a stage-2 run.")
    config = _stage2_config(workdir)
    meta: dict = {}
    features_dir = config.get("data", {}).get("features_dir", "")
    if features_dir and os.path.exists(os.path.join(features_dir, "meta.json")):
        meta = load_meta(features_dir, require_shards=False)  # an old-format directory still names its run
    rqvae_dir = rqvae or config.get("rqvae_workdir") or meta.get("rqvae_workdir")
    if not rqvae_dir:
        raise FileNotFoundError(f"The stage-2 run {workdir} names no stage-1 run; pass it with --rqvae.")
    rq_config = checkpoints.read_run_config(rqvae_dir, "rqvae", "stage-1")
    model = abstract_rq_transformer(config)
    check_stages_match(rq_config, model.code_shape, model.vocab_size, rqvae_dir)
    return Stage2Plan(workdir, config, model, rqvae_dir, rq_config, abstract_rqvae(rq_config), meta)


def load_stage2(workdir: str, step: int | None = None, rqvae: str | None = None, *,
                plan: Stage2Plan | None = None) -> Stage2Run:
    """The RQ-Transformer of a stage-2 run and the RQ-VAE of its stage-1 run (checked to match).

    The stage-1 run is found as `plan_stage2` says; pass its `plan` to skip building it again.
    """
    plan = plan or plan_stage2(workdir, rqvae)
    model, config, step = load_rq_transformer(plan.workdir, step, abstract=plan.model)
    decoder, _, _ = load_rqvae(plan.rqvae_workdir, abstract=plan.decoder)
    return Stage2Run(model, config, int(step), decoder, plan.rqvae_workdir, plan.meta)
