"""Upper bounds on the numbers a user, a preset or a manifest gives: past them a value is a typo, not a
deployment, and would exhaust memory or overflow a library call before any useful error."""

from __future__ import annotations

MAX_BATCH = 1024  # a static batch, and the upper batch of a dynamic-batch artifact without a recorded profile
MAX_INPUT_SIDE = 4096  # pixels a side of a model input
MAX_SEED = 2**32 - 1  # what every seeded generator here accepts (torch, numpy)
MAX_CHANNELS = 65536  # channels of a model output
MAX_THREADS = 256  # CPU threads a runner is given (torch and onnxruntime overflow on far larger counts)
MAX_ITERATIONS = 100_000  # timed or untimed calls per benchmark row
MAX_SEEDED = 64  # seeded random inputs a validation adds
