"""The pure model: hostfiles and host lists, findings and reports, launch lines, Slurm's texts
parsed. Nothing here reaches a node, prints, or imports a transport."""
