"""A job that hangs or slows: every rank's Python stack on every node, grouped, and what they say (a hang
and its culprit, a frozen node, a straggler: ``clusterkit stacks``); torch's flight recorder read from every
node and the first collective the ranks disagree on (``flightrec``)."""
