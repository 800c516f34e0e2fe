"""The arguments every example script takes."""
from __future__ import annotations

import argparse
import os


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--target", default=os.environ.get("SIDECAR_TARGET", "127.0.0.1:50051"),
                   help="API address: HOST:PORT or unix:/PATH (default $SIDECAR_TARGET or 127.0.0.1:50051)")
    p.add_argument("--deadline", type=float, default=60.0,
                   help="seconds the whole example may take, retries included (default 60)")
    p.add_argument("--token", default=os.environ.get("SIDECAR_TOKEN"),
                   help="bearer token (default $SIDECAR_TOKEN; none without a tokens file)")
    p.add_argument("--client-id", default=None,
                   help="x-client-id: a class name from auth.client_ids (servers without tokens)")
    return p
