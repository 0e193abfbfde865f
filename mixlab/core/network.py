"""Is the internet there? (Real downloads when it is, package-shipped copies when not.)"""

import socket
import threading


def internet_reachable(host: str, port: int, timeout: float = 2.0) -> bool:
    """True when a TCP connection to ``host:port`` opens within ``timeout`` seconds.

    Runs in a daemon thread so that a hanging DNS lookup cannot block the caller either.
    """
    result = {"ok": False}

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result["ok"] = True
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return result["ok"]
