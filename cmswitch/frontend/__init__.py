"""CMSwitch: frontend."""
