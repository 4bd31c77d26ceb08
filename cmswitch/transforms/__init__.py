"""CMSwitch: transforms."""
