#!/usr/bin/env python3
"""Health and readiness: gRPC health (`grpc.health.v1`) for the server, a
service and each model, and `/readyz` on the admin port; `--wait` polls
until the models serve and the sidecar is ready (what a client does at
start instead of failing its first calls with UNAVAILABLE).

    .venv/bin/python examples/clients/python/health.py --admin 127.0.0.1:9090 --model smollm2 --wait
"""
import sys
import time

import grpc

from sidecar_client import Deadline, connect
from sidecar_client.health import check, readyz
from sidecar_client.cli import parser


def main() -> int:
    p = parser(__doc__)
    p.add_argument("--admin", default="127.0.0.1:9090", help="the admin port (HOST:PORT)")
    p.add_argument("--model", action="append", default=[], help="a model id (repeatable)")
    p.add_argument("--wait", action="store_true",
                   help="poll until every --model is SERVING and /readyz is 200 (within --deadline)")
    args = p.parse_args()
    deadline = Deadline(args.deadline)
    with connect(args.target) as api:
        if args.wait:
            delay = 0.05
            while True:
                try:
                    states = [check(api.channel, f"model/{m}", deadline.remaining()) for m in args.model]
                except grpc.RpcError as e:
                    # Not up yet (UNAVAILABLE) or the model not registered
                    # yet (NOT_FOUND): keep polling within the deadline.
                    if e.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.NOT_FOUND):
                        raise
                    states = [e.code().name]
                if all(s == "SERVING" for s in states) and readyz(args.admin, deadline.remaining())[0] == 200:
                    break
                time.sleep(min(delay, deadline.remaining()))
                delay = min(delay * 2, 1.0)
        for service in ["", "sidecar.v1.TextService", *[f"model/{m}" for m in args.model]]:
            print(f"health {service or '(server)'}: {check(api.channel, service, deadline.remaining())}")
        try:
            check(api.channel, "model/no-such-model", deadline.remaining())
        except grpc.RpcError as e:
            print(f"health model/no-such-model: {e.code().name}")
    code, body = readyz(args.admin, deadline.remaining())
    print(f"readyz: {code} {body}")
    return 0 if code == 200 else 1


if __name__ == "__main__":
    sys.exit(main())
