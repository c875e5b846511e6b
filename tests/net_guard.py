"""Runs a Python script with every outgoing connection and name lookup of the process logged when it is not to this
machine: `python tests/net_guard.py LOG main.py --mode serve ...` (LOG gets one line per attempt; empty: none).
Used by tests/inference/test_studio.py to check that the server contacts nothing outside (analytics, version checks, fonts)."""
import ipaddress
import runpy
import socket
import sys

LOCAL_NAMES = {'localhost', 'localhost.localdomain', '', None, socket.gethostname()}


def _is_local(host):
    if host in LOCAL_NAMES:
        return True
    try:
        ip = ipaddress.ip_address(str(host).split('%')[0])
    except ValueError:
        return False  # a name that would be looked up
    return ip.is_loopback or ip.is_unspecified


def main():
    log_path, script, *argv = sys.argv[1:]
    log = open(log_path, 'a', buffering=1)

    def note(what, host, port):
        if not _is_local(host):
            log.write(f'{what} {host}:{port}\n')

    connect, getaddrinfo = socket.socket.connect, socket.getaddrinfo

    def guarded_connect(self, address):
        if isinstance(address, tuple):
            note('connect', address[0], address[1])
        return connect(self, address)

    def guarded_getaddrinfo(host, port, *args, **kwargs):
        note('lookup', host, port)
        return getaddrinfo(host, port, *args, **kwargs)

    socket.socket.connect = guarded_connect
    socket.getaddrinfo = guarded_getaddrinfo
    sys.argv = [script] + argv
    sys.path.insert(0, '.')
    runpy.run_path(script, run_name='__main__')


if __name__ == '__main__':
    main()
