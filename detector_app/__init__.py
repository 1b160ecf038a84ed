"""detector-app: real-time animal detection for MentraOS smart glasses (Mentra Live)."""

__version__ = "0.1.0"
