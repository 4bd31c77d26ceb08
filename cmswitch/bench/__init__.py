"""CMSwitch: benchmarks (printed tables)."""
