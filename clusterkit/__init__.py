"""clusterkit: bare GPU machines to a working multi-node DeepSpeed cluster, proven and watched."""

__version__ = "0.1.0"
