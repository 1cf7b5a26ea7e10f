"""Print where a rank runs and what the launcher exported to it; a launch target for cluster tests.

Run by DeepSpeed's launcher on every node (each rank gets RANK/LOCAL_RANK). Imports nothing but the
standard library, so it runs in any env.
"""

import os
import socket

print(f"WHEREAMI rank={os.environ.get('RANK')} host={socket.gethostname()} "
      f"NCCL_SOCKET_IFNAME={os.environ.get('NCCL_SOCKET_IFNAME', '<unset>')} "
      f"PATH={os.environ.get('PATH', '')}", flush=True)
