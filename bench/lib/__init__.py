"""What the benchmark scripts in bench/ share: the method, attack and multi-concept benchmarks."""
