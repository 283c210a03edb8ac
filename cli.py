"""Shim so `python cli.py ...` works from a checkout; the real CLI is hrdeploy/cli.py."""

from hrdeploy.cli import main

if __name__ == "__main__":
    main()
