"""clusterkit as Slurm's node health check: this machine's node checks, drain on error, resume when fixed.

- :mod:`.profile`: the three hooks (health check, prolog, epilog), what each collects and judges, its budget;
- :mod:`.policy`: pure decisions: the drain reason, and whether to drain, resume or leave the node alone;
- :mod:`.runner`: one run on this node: collect in-process, judge, act through ``scontrol``, log;
- :mod:`.install`: the slurm.conf lines and hook scripts for a cluster.
"""
