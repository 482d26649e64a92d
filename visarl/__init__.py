"""visarl: saliency-guided visual reinforcement learning (ViSaRL) on PyTorch Lightning."""

__version__ = "0.1.0"
