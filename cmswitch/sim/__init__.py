"""CMSwitch: sim."""
