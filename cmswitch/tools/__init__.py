"""CMSwitch: tools."""
