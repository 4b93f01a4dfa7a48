"""The ways to generate text besides the kit's own `generate`: the autoregressive baseline (the
same weights, one token per forward pass) and vLLM (in this process, or as a server and its client).
The CLI (`generate --engine`, `vllm-serve`) and the benchmark (benchmarks/engines.py, benchmarks/vllm_bench.py)
both use them. Nothing here imports vLLM until an engine starts.
"""
