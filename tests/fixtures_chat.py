"""Pytest fixtures for the chat emulator (filled in by the emulator's issue)."""
