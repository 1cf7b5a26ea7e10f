"""Collectors: gather facts, judge nothing. Stdlib only (plus optional pynvml); they ship to nodes."""
