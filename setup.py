"""visarl: saliency-guided visual reinforcement learning (ViSaRL) on PyTorch Lightning."""

from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["visarl", "visarl.*"]),
    package_data={"visarl": ["py.typed"]},
    install_requires=[
        # torch and torchvision are left unpinned: take whatever build the machine serves.
        "torch>=2.4",
        "torchvision>=0.19",
        "lightning>=2.4",
        "timm>=1.0",
        "torchmetrics>=1.4",
        "metaworld>=3.0",
        "mujoco>=3.1",
        "gymnasium>=1.0",
        "omegaconf>=2.3",
        "tensorboard>=2.16",
        "h5py>=3.10",
        "numpy>=1.26",
        "tqdm>=4.66",
        "matplotlib>=3.8",
    ],
    extras_require={
        # Peers that benchmarks/sac_updates.py and learn_reach.py compare against; not needed to use visarl.
        "bench": ["stable-baselines3>=2.3"],
        "dev": [
            "pytest>=8",
            "pytest-timeout>=2.3",
            "hypothesis>=6.100",
            "ruff>=0.6",
            "playwright>=1.40",
            "nbclient>=0.10",
            "nbformat>=5.9",
            "ipykernel>=6.29",
            "pysodmetrics>=1.6",  # tests check visarl.saliency.metrics against it
        ],
    },
)
