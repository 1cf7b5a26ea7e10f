"""Hung and desynced jobs: what the ranks were doing when progress stopped."""
