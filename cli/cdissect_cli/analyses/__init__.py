"""The paper's analyses as commands, each reading a finished run folder (no recomputation)."""
