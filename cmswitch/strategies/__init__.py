"""CMSwitch: strategies."""
