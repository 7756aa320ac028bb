"""Forgetting methods beyond plain amnesiac subtraction, built on what a store holds.

* :mod:`.checkpoints` -- periodic full checkpoints (weights + optimizer state) beside a store;
* :mod:`.trajectory` -- the weights before each step, rebuilt from checkpoints and stored updates;
* :mod:`.precise` -- sample-precise removal (only the forgotten samples' share of each step);
* :mod:`.repair` -- a short fine-tune on retained data after a subtraction.

Measured against retraining in ``benchmarks/EFFICACY.md`` (``python -m benchmarks efficacy``).
"""

from .checkpoints import Checkpointer, checkpoint_bytes, list_checkpoints, load_checkpoint
from .precise import precise_removal
from .repair import repair

__all__ = ["Checkpointer", "checkpoint_bytes", "list_checkpoints", "load_checkpoint", "precise_removal", "repair"]
