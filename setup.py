"""xformer-jax: X-Former / BLIP-2 in JAX + Flax, ported from and exported to PyTorch."""
from setuptools import find_packages, setup

setup(
    name="xformer_jax",
    version="0.1.0",
    description="X-Former (ECCV 2024) and BLIP-2 in JAX/Flax: sharded two-stage training, HF weight import, PyTorch export.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["xformer_jax", "xformer_jax.*"]),
    python_requires=">=3.11",
    install_requires=[
        "jax>=0.10.2",
        "flax>=0.12.8",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12.8",
        "grain>=0.2.18",
        "ml_collections>=1.1.0",
        "tensorflow-datasets>=4.9.10",
        "safetensors>=0.8.0",
        "numpy>=2.0",
        "pillow>=10.0",
        "tokenizers>=0.23",
        "transformers>=5.24.0",  # AutoTokenizer for the LLM's tokenizer directory (no torch needed)
        "tensorboardX>=2.6",
        "absl-py>=2.0",
        "matplotlib>=3.10",  # the demo's pictures (imported by xformer_jax.proj.synthetic.plots only)
    ],
    extras_require={
        # torch first (the Makefile installs the CPU wheel before this extra); a real GCS-compatible server
        # for the object-storage tests.
        "test": ["pytest>=9.0", "pytest-xdist>=3.8", "torch==2.13.0", "transformers==5.24.0",
                 "gcp-storage-emulator>=2026.7.19", "portpicker>=1.6"],
        "torch": ["torch>=2.13.0", "transformers>=5.24.0"],
        # gs:// paths (run directories, data, checkpoints) through etils.epath / fsspec.
        "gcs": ["gcsfs>=2026.9.0"],
        "tpu": ["jax[tpu]>=0.10.2"],
        "gpu": ["jax[cuda12]>=0.10.2"],  # NVIDIA GPUs, CUDA 12 wheels (any driver >= 525)
        "gpu-cuda13": ["jax[cuda13]>=0.10.2"],  # NVIDIA GPUs, CUDA 13 wheels (driver >= 580)
        # launch/plan.py --target=tpu-*/gpu: the TPU and GPU compilers, run on a CPU host with no chip
        # attached (libtpu and the CUDA PJRT plugin; no CUDA runtime wheels).
        "plan": ["jax[tpu]>=0.10.2", "jax-cuda12-plugin>=0.10.2", "jax-cuda12-pjrt>=0.10.2"],
    },
)
