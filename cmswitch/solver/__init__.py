"""CMSwitch: solver."""
