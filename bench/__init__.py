"""Benchmarks of the inference pipeline, run as modules from the repository root:
`python -m bench.pipeline`, `bench.memory`, `bench.chunk`, `bench.forward`."""
