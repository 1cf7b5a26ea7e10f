"""The monitor's model and sources: typed samples, cluster state, stragglers, live and recorded streams.

No Textual here: the TUI (``clusterkit.ui.tui``) reads a Source; ``--once --json`` needs no UI at all.
"""
