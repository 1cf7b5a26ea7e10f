"""DeepSpeed configs: read them (``load``), judge them (``check``, ``rules*``, ``introspect``), simulate
the HF Trainer's ``"auto"`` (``hf_auto``), size the launch (``topology``, ``resources``), summarize them
(``summary``) and estimate memory (``estimate``, ``hf_model``).

Modules import DeepSpeed and torch lazily, so importing this package stays cheap.
"""
