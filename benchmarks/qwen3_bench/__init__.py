"""The benchmark behind ``benchmarks/bench.py``: contenders, workload model, vLLM process, report."""
