"""SynerDiff core: pure Python + numpy, no Triton import (tests/unit/test_core_is_pure.py enforces it).

Parts: `request` (params + the one validator), `limits`, `errors`, `sampler` (batched, per-row
timesteps), `planner` (policies), `engine` (add / abort / step around an `Executor`).
"""
