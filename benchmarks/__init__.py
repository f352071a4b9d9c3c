"""Benchmarks of the service: each module runs from the repository root as ``python -m benchmarks.<name>``
(benchmarks/README.md). ``common`` holds what they share; ``loadgen`` generates load; ``local_serve`` starts Ray and
Serve in the benchmark's own process."""
