"""Key material: KMS providers (KEKs), data keys (DEKs), token keys and the quarantine key."""
