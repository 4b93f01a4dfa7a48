"""The ways to generate text besides the kit's own `generate`: the autoregressive baseline and vLLM
(in this process, or a server and its client), for the CLI and the benchmarks alike. Nothing here
imports vLLM until an engine starts."""
