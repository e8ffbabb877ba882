"""streams layer."""
