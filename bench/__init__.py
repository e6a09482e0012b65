"""`make bench`: what crishim adds on top of the kernel and the CNI plugins, measured side by side.

Run from the repository root as root (`python -m bench --pods N`); it reuses the test harness for the test
node and the server, so nothing touches the machine's own network.
"""
