"""What is shipped to nodes and runs there: the agent, its collectors, the relay hop and the env
unpacker. Standard library only (pynvml where a node has it): nodes hold no clusterkit."""
