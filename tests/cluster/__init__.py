"""Tests on a real cluster: network-namespace nodes on a bridge running sshd (see harness.py)."""
