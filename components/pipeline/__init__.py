"""The DVC pipeline as scheduler steps, and the notes a failed run leaves."""
