"""Tools built on the pipeline: algorithm comparisons, benchmarks, the value study."""
