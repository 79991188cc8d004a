"""How much of the input pipeline runs at once, set explicitly: turning tf.data's
autotuning off (``data.autotune``) must never make a map serial or a buffer tiny."""

from __future__ import annotations

import os

PARALLEL_CALLS = max(2, os.cpu_count() or 1)   # examples (or record files) in flight
PREFETCH_BATCHES = 2                           # batches ready ahead of the training step
