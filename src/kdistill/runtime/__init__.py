"""Runtime helpers on the ground floor: ranks (distributed), atomic file writes, RNG state."""
