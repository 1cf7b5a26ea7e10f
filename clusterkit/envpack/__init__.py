"""Offline training envs: pack once on the head, broadcast to every node, unpack at the same path, verify.

- :mod:`~clusterkit.envpack.pack`: a conda env with conda-pack (zstd, threads) or a venv, refusing what
  cannot travel, with a manifest (archive sha256, package-set hash, what to verify);
- :mod:`~clusterkit.cluster.remote.transfer`: generic streamed upload and pipelined node-to-node relay;
- :mod:`~clusterkit.envpack.push`: which nodes need it, broadcast, unpack, verify, per-node outcomes;
- :mod:`~clusterkit.node.env_unpack`: what runs on nodes (stdlib, Python 3.8+): survey, unpack, verify.
"""
