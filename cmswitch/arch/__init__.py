"""CMSwitch: arch."""
