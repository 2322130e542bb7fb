"""ExaBGP's API process: relays its stdin/stdout to tortie-node's unix socket.

ExaBGP starts this (``python -I -S relay.py <socket>``) as its ``process``; the speaker in
tortie-node listens on ``<socket>``.  Standard library only, so it starts in ~20 ms.  When
either side closes, the relay exits (and ExaBGP, run with ``api.terminate``, follows).
"""

import os
import select
import socket
import sys


def main(path: str) -> int:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    stdin, stdout, peer = sys.stdin.fileno(), sys.stdout.fileno(), sock.fileno()
    while True:
        ready, _, _ = select.select([stdin, peer], [], [])
        if stdin in ready:
            data = os.read(stdin, 65536)
            if not data:
                return 0
            sock.sendall(data)
        if peer in ready:
            data = sock.recv(65536)
            if not data:
                return 0
            view = memoryview(data)
            while view:
                view = view[os.write(stdout, view):]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
