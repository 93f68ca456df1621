"""Orbax checkpointing of the train state and the data iterator, resume order and preemption.

Resume order (`restore_or_init`), first match wins:
  1. the latest complete checkpoint in `<workdir>/checkpoints` (a restart after preemption);
  2. `config.init_from`, a checkpoint directory of another run (e.g. LSUN finetuned from ImageNet):
     only the train state's model parts are taken, the step and the data position start fresh;
  3. a fresh initialisation.
A checkpoint that cannot be read raises one clear error and deletes nothing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterable
from typing import Any

import grain
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath


class CheckpointError(RuntimeError):
    """A checkpoint exists but cannot be used; the message names it and the fix."""


@jax.jit
def all_finite(tree: Any) -> jax.Array:
    """True when every floating-point leaf of `tree` is finite (one fused reduction on the devices)."""
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
              if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def _manager(directory: epath.PathLike, *, max_to_keep: int | None, async_save: bool, with_data: bool):
    items = ("state", "data") if with_data else ("state",)
    handlers: dict[str, Any] = {"state": ocp.StandardCheckpointHandler()}
    if with_data:
        handlers["data"] = grain.checkpoint.CheckpointHandler()
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, enable_async_checkpointing=async_save, create=True
    )
    return ocp.CheckpointManager(
        epath.Path(directory), options=options, item_names=items, item_handlers=handlers
    )


class Checkpointer:
    """Saves and restores `{"state": pytree of arrays, "data": grain iterator}` under `<workdir>/checkpoints`."""

    def __init__(self, workdir: str, *, max_to_keep: int = 3, async_save: bool = True, with_data: bool = True):
        # orbax needs absolute local paths; remote ones (gs://...) are used as given
        self.directory = epath.Path(workdir if "://" in str(workdir) else os.path.abspath(workdir)) / "checkpoints"
        self.with_data = with_data
        self.manager = _manager(self.directory, max_to_keep=max_to_keep, async_save=async_save, with_data=with_data)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, data_iter: Any = None, *, force: bool = False) -> bool:
        args = {"state": ocp.args.StandardSave(state)}
        if self.with_data and data_iter is not None:
            args["data"] = grain.checkpoint.CheckpointSave(data_iter)
        return self.manager.save(step, args=ocp.args.Composite(**args), force=force)

    def restore(self, step: int, abstract_state: Any, data_iter: Any = None) -> Any:
        """Restores `state` (onto the shardings of `abstract_state`) and the iterator in place."""
        differs = shape_difference(self.directory / str(step) / "state", abstract_state)
        if differs:
            raise CheckpointError(
                f"This config describes another model than the checkpoint {self.directory / str(step)} ({differs}); "
                "resume with the run's own config (its config.json) or start with a new --workdir."
            )
        args = {"state": ocp.args.StandardRestore(abstract_state)}
        if self.with_data and data_iter is not None:
            args["data"] = grain.checkpoint.CheckpointRestore(data_iter)
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(**args))
        except Exception as e:  # noqa: BLE001 - re-raised with the path and the fix
            raise CheckpointError(
                f"The checkpoint {self.directory / str(step)} could not be restored ({type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else ''}); move that step directory aside to resume from "
                "an earlier step, or start with a new --workdir (nothing was deleted)."
            ) from e
        return restored["state"]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def _shapes_by_path(tree: Any) -> dict[str, tuple[int, ...]]:
    """Leaf shapes keyed by a path string that is the same for a live state (nnx Variables) and saved metadata."""
    out = {}
    leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: hasattr(x, "shape"))[0]
    for path, leaf in leaves:
        names = [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path]
        out["/".join(n for n in names if n != "value")] = tuple(leaf.shape)
    return out


def shape_difference(state_dir: epath.Path, abstract_state: Any) -> str | None:
    """The first array whose saved shape differs from `abstract_state`'s ("gen/... is (3, 3, 3, 128) in the
    checkpoint and (3, 3, 3, 64) in this config"), or None (also when the metadata cannot be read)."""
    try:
        saved = _shapes_by_path(_saved_metadata(state_dir))
    except Exception:  # noqa: BLE001 - no readable metadata: the restore itself reports the problem
        return None
    for key, shape in _shapes_by_path(abstract_state).items():
        if key in saved and saved[key] != shape:
            return f"{key} is {saved[key]} in the checkpoint and {shape} in this config"
    return None


def restore_or_init(
    ckpt: Checkpointer,
    abstract_state: Any,
    init_fn: Callable[[], Any],
    data_iter: Any = None,
    *,
    init_from: str = "",
    init_from_keys: Iterable[str] = (),
    step_of: Callable[[Any], int] = lambda s: int(s["step"]),
) -> tuple[Any, int, str]:
    """Returns (state, step, how) following the resume order documented in this module."""
    latest = ckpt.latest_step()
    if latest is not None:
        state = ckpt.restore(latest, abstract_state, data_iter)
        if not bool(all_finite(state)):
            earlier = [s for s in sorted(ckpt.manager.all_steps()) if s < latest]
            fix = f"to resume from step {earlier[-1]}" if earlier else "(no earlier step is kept)"
            raise CheckpointError(
                f"The checkpoint {ckpt.directory / str(latest)} holds NaN/Inf values (the run had diverged); move "
                f"that step directory aside {fix}, or start with a new --workdir (nothing was deleted)."
            )
        return state, step_of(state), f"resumed from {ckpt.directory / str(latest)}"
    state = init_fn()
    if init_from:
        keys = tuple(init_from_keys)
        parts = restore_partial(init_from, {k: abstract_state[k] for k in keys})
        state = {**state, **parts}
        return state, 0, f"initialised {', '.join(keys)} from {init_from}"
    return state, 0, "initialised from scratch"


def restore_partial(path: str, abstract_part: dict[str, Any]) -> dict[str, Any]:
    """Restores the top-level keys of `abstract_part` from a run's checkpoint (`…/checkpoints[/STEP]`).

    The whole saved tree is read onto the host (any saving topology: other processes, devices, mesh) and
    the requested keys are placed onto the shardings of `abstract_part`, so the source run may have had
    other optimizer settings.
    """
    root = epath.Path(path if "://" in str(path) else os.path.abspath(path))
    if not root.exists():
        raise CheckpointError(
            f"config.init_from points to {path}, which does not exist; give the checkpoints directory of a "
            "finished run (WORKDIR/checkpoints or one step inside it) or set config.init_from=''."
        )
    if not root.name.isdigit():
        steps = sorted(int(p.name) for p in root.iterdir() if p.name.isdigit())
        if not steps:
            raise CheckpointError(
                f"config.init_from={path} holds no checkpoint steps; point it at WORKDIR/checkpoints."
            )
        root = root / str(steps[-1])
    try:
        tree = _restore_on_host(root / "state", abstract_part)
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"config.init_from={path}: {root / 'state'} could not be read ({e}).") from e
    out = {}
    for k, abstract in abstract_part.items():
        if k not in tree:
            raise CheckpointError(f"config.init_from={path} has no '{k}' entry "
                                  f"(it has {sorted(_saved_metadata(root / 'state'))}).")
        # the saved entry is nested dicts, the abstract one an nnx State: match the leaves by path
        try:
            values = fill_abstract(abstract, tree[k], str(root))
        except CheckpointError as e:
            raise CheckpointError(
                f"config.init_from={path}: '{k}' has other shapes than this config's model; the two "
                "configs must describe the same architecture."
            ) from e
        out[k] = jax.tree.map(lambda a, ab: jax.device_put(np.asarray(a), ab.sharding), values, abstract)
    return out


def _restore_on_host(state_dir: epath.Path, keys: Iterable[str] | None = None) -> Any:
    """A saved state tree (only its top-level `keys`, if given) onto this process's CPU, whatever processes
    and devices wrote it.

    Without a target orbax restores onto the saved shardings, and refuses ("Topology mismatch") when those
    devices do not exist here, e.g. a checkpoint of a two-process run read by one process.
    """
    return restore_onto(state_dir, jax.local_devices(backend="cpu")[0], keys)


class _NoStepMetadataWarning(logging.Filter):
    """orbax warns "Metadata file does not exist: <item>/_CHECKPOINT_METADATA" whenever an item directory is read
    directly (that file sits one level up, in the step directory), which is how `restore_onto` reads: noise
    on every `sample`/`extract`/`evaluate` command, so these reads drop that one message."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "_CHECKPOINT_METADATA" not in record.getMessage()


@contextlib.contextmanager
def _reading_an_item():
    quiet, absl_logger = _NoStepMetadataWarning(), logging.getLogger("absl")
    absl_logger.addFilter(quiet)
    try:
        yield
    finally:
        absl_logger.removeFilter(quiet)


def _saved_metadata(state_dir: epath.Path) -> Any:
    """The tree of array metadata (shape, dtype) of a saved state."""
    with _reading_an_item():
        meta = ocp.StandardCheckpointer().metadata(state_dir)
    return getattr(getattr(meta, "item_metadata", meta), "tree", meta)


def restore_onto(state_dir: epath.Path, device: Any, keys: Iterable[str] | None = None) -> Any:
    """A saved state tree with every array on `device`, whatever processes and devices wrote it.

    With `keys`, only those top-level entries are read (orbax's partial restore; absent keys are left out):
    loading a model's weights from a train state skips its optimizer state, twice their size with Adam
    (the FFHQ 355M weights alone: 3.5 s instead of 17.8 s for the whole stage-2 state).
    """
    one = jax.sharding.SingleDeviceSharding(device)
    saved = _saved_metadata(state_dir)
    if keys is not None:
        wanted = set(keys)
        saved = {k: v for k, v in saved.items() if k in wanted}
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one), saved,
                          is_leaf=lambda x: hasattr(x, "shape") and hasattr(x, "dtype"))
    if keys is not None and not target:
        return {}
    with _reading_an_item():
        if keys is None:
            return ocp.StandardCheckpointer().restore(state_dir, target)
        return _partial_restore(state_dir, target)


def _partial_restore(state_dir: epath.Path, target: Any) -> Any:
    """orbax's partial restore of the entries in `target` (ShapeDtypeStructs with shardings), strict shapes."""
    args = ocp.args.PyTreeRestore(item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                                  partial_restore=True)
    return ocp.PyTreeCheckpointer().restore(state_dir, args=args)


def read_run_config(workdir: str, stage: str, label: str, fix: str = ""):
    """The `config.json` a training run wrote, checked to be of `stage` (one clear error otherwise)."""
    import json

    import ml_collections

    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} does not exist: give the --workdir of a {label} training run.")
    with open(path) as f:
        config = ml_collections.ConfigDict(json.load(f))
    if config.get("stage") != stage:
        raise ValueError(
            f"{workdir} holds a config.stage={config.get('stage')!r} run, not a {label} {stage!r} run{fix}."
        )
    return config


def restore_parts(workdir: str, abstract_parts: dict[str, Any], step: int | None = None) -> tuple[dict, int]:
    """Restores some top-level entries of a run's saved train state onto abstract nnx states.

    The checkpoint is read onto this process's first device whatever mesh wrote it (a run trained on
    8 devices loads on 1), and every abstract leaf is looked up by its path, with shapes checked, so a
    model can be rebuilt with `nnx.eval_shape` and filled (no random init).
    """
    ckpt = Checkpointer(workdir, with_data=False, async_save=False)
    steps = sorted(ckpt.manager.all_steps())
    ckpt.close()
    if not steps:
        raise FileNotFoundError(f"{ckpt.directory} holds no checkpoint; train first or pass another --workdir.")
    if step is not None and step not in steps:
        raise FileNotFoundError(f"{ckpt.directory} has no step {step}; its steps are {', '.join(map(str, steps))}.")
    step = steps[-1] if step is None else step
    where = ckpt.directory / str(step)
    device = jax.local_devices()[0]
    try:
        tree = _restore_as(where / "state", abstract_parts, device)
    except Exception:  # noqa: BLE001 - another structure or shape: read what is there, for a clear error below
        try:
            tree = restore_onto(where / "state", device, abstract_parts)
        except Exception as e:  # noqa: BLE001
            raise CheckpointError(
                f"The checkpoint {where} could not be read ({type(e).__name__}); pick another step or retrain."
            ) from e
    return {k: fill_abstract(a, tree.get(k, {}), str(where)) for k, a in abstract_parts.items()}, step


def _restore_as(state_dir: epath.Path, abstract_parts: dict[str, Any], device: Any) -> Any:
    """The saved entries at exactly the abstract leaves' paths and shapes (orbax's partial restore, strict
    shapes), onto `device`. Skips reading the saved tree's metadata first (`restore_onto`), ~0.8 s per run of
    the FFHQ models; raises when the checkpoint has another structure or shape."""
    one = jax.sharding.SingleDeviceSharding(device)
    target: dict = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(abstract_parts)[0]:
        names = [str(_key_name(k)) for k in path]  # the saved tree's keys are strings
        node = target
        for name in names[:-1]:
            node = node.setdefault(name, {})
        node[names[-1]] = jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=one)
    with _reading_an_item():
        return _partial_restore(state_dir, target)


def _key_name(key: Any) -> Any:
    """The dict key, attribute name or index of one step of a pytree path."""
    return getattr(key, "key", getattr(key, "name", getattr(key, "idx", None)))


def fill_abstract(abstract_state: Any, saved: Any, where: str) -> Any:
    """Looks every abstract leaf up by its path in the restored dict (checking shapes), as that state."""
    paths_leaves, treedef = jax.tree_util.tree_flatten_with_path(abstract_state)
    out = []
    for path, leaf in paths_leaves:
        node = saved
        for key in path:
            name = _key_name(key)
            node = node.get(name, node.get(str(name))) if isinstance(node, dict) else None
            if node is None:
                break
        if node is None or tuple(np.shape(node)) != tuple(leaf.shape):
            raise CheckpointError(
                f"The checkpoint {where} does not match the model described by its config.json "
                f"(at {jax.tree_util.keystr(path)}); it was written by another model configuration."
            )
        out.append(jax.numpy.asarray(node, leaf.dtype))
    return jax.tree.unflatten(treedef, out)


class PreemptionGuard:
    """Turns SIGTERM and SIGINT (Ctrl-C) into a flag the training loop polls: save, then exit cleanly.

    A second SIGINT while the first is being handled raises KeyboardInterrupt at once (the user insists).
    `received` is the first signal's number (None until one arrives), so the loop can exit 130 after a
    Ctrl-C and 0 after a preemption. On multi-host runs, `should_stop(step)` also consults JAX's preemption
    sync point so every host stops at the same step.
    """

    def __init__(self, signals: Iterable[int] = (signal.SIGTERM, signal.SIGINT)):
        self._event = threading.Event()
        self._previous = {}
        self.received: int | None = None
        if threading.current_thread() is threading.main_thread():
            for s in signals:
                self._previous[s] = signal.signal(s, self._handle)

    def _handle(self, signum, frame):  # noqa: ARG002
        if self._event.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signum
        what = "Ctrl-C" if signum == signal.SIGINT else f"signal {signum}"
        logging.warning("Received %s: saving a checkpoint and stopping (Ctrl-C again to stop at once).", what)
        self._event.set()

    def should_stop(self, step: int) -> bool:
        if self._event.is_set():
            return True
        if jax.process_count() > 1:
            try:
                from jax.experimental import multihost_utils

                return bool(multihost_utils.reached_preemption_sync_point(step))
            except Exception:  # noqa: BLE001 - no preemption service configured
                return False
        return False

    def restore(self) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)
