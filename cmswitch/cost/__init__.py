"""CMSwitch: cost."""
