"""pienv: a git-like versioned environment in Docker for coding agents."""

__version__ = "0.1.0"
