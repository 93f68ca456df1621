"""Synthetic official checkpoints for the converter tests: the released configs' values, state dicts of the
real names and shapes (tests/golden/official_state_dicts), yaml builders, and checks of loaded parameters."""

import ast
import importlib.util
import pathlib
import re

import numpy as np
import pytest
from flax import nnx

HAVE_TORCH = importlib.util.find_spec("torch") is not None and importlib.util.find_spec("yaml") is not None
needs_torch = pytest.mark.skipif(not HAVE_TORCH, reason="the official converter needs torch and pyyaml")

DATA = pathlib.Path(__file__).parents[1] / "golden"
STATE_DICTS = DATA / "official_state_dicts"

# The official configs' values (kakaobrain/rq-vae-transformer configs/*.yaml) for every released state dict.
STAGE1_RELEASED = {  # file stem: (n_embed, attn_resolutions, dataset.type)
    "stage1_imagenet_rqvae_8x8x4": (16384, [8], "imagenet"),
    "stage1_ffhq_rqvae_8x8x4": (2048, [16], "ffhq"),
}
# file stem: (stage-1 stem, embed_dim, body/head n_layer, n_head, vocab, vocab/block_size_cond, dataset)
STAGE2_RELEASED = {
    "ffhq256-rqtransformer-8x8x4-350M": ("stage1_ffhq_rqvae_8x8x4", 1024, 24, 4, 16, 2048, 1, 1, "ffhq"),
    "lsun-church256-sqgan-8x8x4-350M-simp": ("stage1_imagenet_rqvae_8x8x4", 1024, 24, 4, 16, 16384, 1, 1,
                                             "LSUN-church"),
    "cat256-rqtransformer-8x8x4-600M": ("stage1_imagenet_rqvae_8x8x4", 1280, 26, 4, 20, 16384, 1, 1, "LSUN-cat"),
    "bedroom256-rqtransformer-8x8x4-600M": ("stage1_imagenet_rqvae_8x8x4", 1280, 26, 4, 20, 16384, 1, 1,
                                            "LSUN-bedroom"),
    "in256-rqtransformer-8x8x4-480M": ("stage1_imagenet_rqvae_8x8x4", 1536, 12, 4, 24, 16384, 1000, 1, "imagenet"),
    "in256-rqtransformer-8x8x4-800M": ("stage1_imagenet_rqvae_8x8x4", 1536, 24, 4, 24, 16384, 1000, 1, "imagenet"),
    "in256-rqtransformer-8x8x4-1400M": ("stage1_imagenet_rqvae_8x8x4", 1536, 42, 6, 24, 16384, 1000, 1, "imagenet"),
    "in256-rqtransformer-8x8x4-3800M": ("stage1_imagenet_rqvae_8x8x4", 2560, 42, 6, 40, 16384, 1000, 1, "imagenet"),
    "cc3m-rqtransformer-8x8x4-650M": ("stage1_imagenet_rqvae_8x8x4", 1280, 26, 4, 20, 16384, 16384, 32, "cc3m"),
}


# ---- helpers: shapes, synthetic official files -------------------------------------------------------------
def read_shapes(stem: str) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for line in (STATE_DICTS / f"{stem}.txt").read_text().splitlines():
        if line.strip():
            name, shape, *_ = line.split("\t")
            shapes[name] = tuple(ast.literal_eval(shape))
    return shapes


def zero_stride(shapes):
    """Stand-ins with the real shapes that take no memory (every element is the same float32 zero)."""
    return {name: np.broadcast_to(np.float32(0), shape) for name, shape in shapes.items()}


def shrink(shapes, dims, keep_blocks=None):
    """The same names with every dimension mapped through `dims` and only the first transformer blocks kept."""
    out = {}
    for name, shape in shapes.items():
        m = re.match(r"^(body|head)_transformer\.blocks\.(\d+)\.", name)
        if m and keep_blocks and int(m.group(2)) >= keep_blocks[m.group(1)]:
            continue
        out[name] = tuple(dims.get(s, s) for s in shape)
    return out


def random_state_dict(shapes, seed):
    """Random float32 values; the shared codebook's aliases are one tensor whose last (padding) row is zero."""
    rng = np.random.default_rng(seed)
    sd = {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}
    if "quantizer.codebooks.0.weight" in sd:
        sd["quantizer.codebooks.0.weight"][-1] = 0.0
        sd["quantizer.codebooks.0.cluster_size_ema"] = np.abs(sd["quantizer.codebooks.0.cluster_size_ema"])
        for name in sd:
            m = re.match(r"^quantizer\.codebooks\.(\d+)\.(.*)$", name)
            if m and m.group(1) != "0":
                sd[name] = sd[f"quantizer.codebooks.0.{m.group(2)}"]
    return sd


def stage1_yaml(n_embed, attn, dataset, *, ch=128, z=256, embed=256, ch_mult=(1, 1, 2, 2, 4, 4), res=256,
                num_res_blocks=2):
    """An official stage-1 config.yaml (the schema of configs/*/stage1/*.yaml)."""
    f = 2 ** (len(ch_mult) - 1)
    return {
        "dataset": {"type": dataset, "transforms": {"type": f"{dataset}256x256"}},
        "arch": {
            "type": "rq-vae", "code_hier": 1,
            "hparams": {"bottleneck_type": "rq", "embed_dim": embed, "n_embed": n_embed,
                        "latent_shape": [res // f, res // f, embed], "code_shape": [res // f, res // f, 4],
                        "shared_codebook": True, "decay": 0.99, "restart_unused_codes": True, "loss_type": "mse",
                        "latent_loss_weight": 0.25},
            "ddconfig": {"double_z": False, "z_channels": z, "resolution": res, "in_channels": 3, "out_ch": 3,
                         "ch": ch, "ch_mult": list(ch_mult), "num_res_blocks": num_res_blocks,
                         "attn_resolutions": list(attn), "dropout": 0.0},
            "checkpointing": True,
        },
        "optimizer": {"type": "adam", "init_lr": 4.0e-5, "weight_decay": 0.0, "betas": [0.5, 0.9],
                      "warmup": {"epoch": 0.5, "multiplier": 1, "buffer_epoch": 0, "min_lr": 4.0e-5, "mode": "fix"}},
        "experiment": {"batch_size": 32, "epochs": 10, "save_ckpt_freq": 5, "test_freq": 1},
        "gan": {"disc": {"arch": {"in_channels": 3, "num_layers": 2, "use_actnorm": False, "ndf": 64,
                                  "spectral_norm": False}},
                "loss": {"disc_loss": "hinge", "gen_loss": "vanilla", "disc_weight": 0.75, "perceptual_weight": 1.0,
                         "disc_start": 0}},
    }


def stage2_yaml(d_model, body, head, heads, vocab, cond_vocab, cond_len, dataset, *, input_embed=256,
                block_size=(8, 8, 4), vqvae=None):
    """An official stage-2 config.yaml (the schema of configs/*/stage2/*.yaml and configs/cc3m/*.yaml)."""
    y = {
        "dataset": {"type": dataset, "vocab_size": vocab},
        "arch": {
            "type": "rq-transformer", "block_size": list(block_size), "embed_dim": d_model,
            "input_embed_dim": input_embed, "shared_tok_emb": True, "shared_cls_emb": True, "input_emb_vqvae": True,
            "head_emb_vqvae": True, "cumsum_depth_ctx": True, "vocab_size_cond": cond_vocab,
            "block_size_cond": cond_len, "body": {"n_layer": body, "block": {"n_head": heads}},
            "head": {"n_layer": head, "block": {"n_head": heads}},
        },
        "loss": {"type": "soft_target_cross_entropy", "stochastic_codes": True, "temp": 0.5},
        "optimizer": {"type": "adamW", "init_lr": 0.0005, "weight_decay": 0.0001, "betas": [0.9, 0.95],
                      "max_gn": 1.0},
        "experiment": {"amp": True, "batch_size": 32, "total_batch_size": 2048, "epochs": 100,
                       "sample": {"top_k": 250, "top_p": 1.0}},
    }
    if cond_len > 1:  # configs/cc3m: the dataset section names the tokenizer and the text length
        y["dataset"] = {"dataset": dataset, "txt_tok_name": "bpe16k_huggingface", "vocab_size_txt": cond_vocab,
                        "vocab_size": vocab, "image_resolution": 256, "context_length": cond_len}
    if vqvae:
        y["vqvae"] = {"ckpt": vqvae}
    return y


def write_official(folder: pathlib.Path, state_dict, yaml_cfg=None, *, wrap=True, extra=None):
    """An official checkpoint folder: model.pt ({"state_dict": ...} or the bare state dict) and config.yaml."""
    import torch
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state_dict.items()}
    torch.save({"epoch": 10, "state_dict": tensors, **(extra or {})} if wrap else tensors, folder / "model.pt")
    if yaml_cfg is not None:
        (folder / "config.yaml").write_text(yaml.safe_dump(yaml_cfg))
    return folder / "model.pt"


def expected_flax_layout(name: str, array: np.ndarray) -> np.ndarray:
    """The rq_jax layout of an official tensor, written out independently of the converter."""
    if array.ndim == 4:  # conv (out, in, kh, kw) -> (kh, kw, in, out)
        return array.transpose(2, 3, 1, 0)
    if name.startswith("pos_emb"):  # (1, L, C) -> (L, C)
        return array[0]
    if array.ndim == 2 and name.endswith(".weight") and not name.startswith("cond_emb."):  # Linear (out, in)
        return array.T
    return array


def check_loaded_params(model, state_dict, name_of, skip=()):
    """Every model parameter equals its source tensor in the rq_jax layout; returns the source names used."""
    used = set()
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        name = name_of(path)
        np.testing.assert_array_equal(np.asarray(var.get_value()), expected_flax_layout(name, state_dict[name]),
                                      err_msg=name)
        used.add(name)
    return used
