"""Speed and scaling benchmarks: `python -m benchmarks.NAME [--quick]`."""
