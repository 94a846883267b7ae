"""Triton model repository for SynerDiff: config templates (`<model>/config.pbtxt.in`) and thin
`model.py` adapters. Only `triton_edge` imports `triton_python_backend_utils`."""
