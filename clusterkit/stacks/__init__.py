"""``clusterkit stacks``: every rank's Python stack on every node, grouped, and what they say (a hang and
its culprit, a frozen node, a straggler)."""
