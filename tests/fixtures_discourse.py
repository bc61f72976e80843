"""Pytest fixtures for the discourse emulator (filled in by the emulator's issue)."""
