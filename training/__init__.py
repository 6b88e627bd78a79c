"""Training and analysis scripts for VIST3A checkpoints (they import the core library ``vist3a`` only)."""
