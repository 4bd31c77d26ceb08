"""CMSwitch: asm."""
