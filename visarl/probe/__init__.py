"""Few-shot behaviour cloning from Meta-World's scripted experts: a cheap test of a visual representation.

The R3M / VC-1 (CortexBench) protocol: record N expert demonstrations, train a small MLP policy (BatchNorm on its
input, 2-3 hidden layers of 256) by MSE on the expert's actions from an encoder's features, and measure success
over 50 episodes every K steps. A frozen encoder runs once per demo frame; its embeddings are stored in the demo
shards and training reads them.
"""

from visarl.probe.demos import DemoSet, add_field, load_demos, record_demos
from visarl.probe.policy import BCPolicy

__all__ = ["BCPolicy", "DemoSet", "add_field", "load_demos", "record_demos"]
