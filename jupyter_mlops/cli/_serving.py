"""``jupyter mlops deploy`` and ``jupyter mlops endpoints ls|show|logs|delete``."""

from __future__ import annotations

import argparse
import json
from typing import Any

from .._format import dump_json, fmt_latency, fmt_time, text_table
from ._common import Parser, open_workspace


def cmd_deploy(args: argparse.Namespace) -> int:
    endpoint = open_workspace().deploy(
        args.model, args.entry, name=args.name, host=args.host, port=args.port,
        cores=args.cores, memory=args.memory, replicas=args.replicas, auth=not args.no_auth,
        wait=args.wait, target=args.target, min_replicas=args.min_replicas,
        max_replicas=args.max_replicas)
    if args.json:
        print(dump_json({**endpoint.to_dict(), "key": endpoint.key}))
        return 0
    print(f"endpoint {endpoint.name} {endpoint.status}: POST {endpoint.scoring_url}")
    if endpoint.key:
        print(f"key (send as 'Authorization: Bearer KEY'): {endpoint.key}")
    return 0


def _endpoint_rows(endpoints: list[Any]) -> list[list[str]]:
    rows = []
    for endpoint in endpoints:
        d = endpoint.to_dict()
        stats = d["stats"] or {}
        rows.append([d["name"], d["id"], d["status"], d["model"], d["scoring_url"],
                     str(stats.get("requests", 0)), str(stats.get("errors", 0)),
                     fmt_latency(stats.get("p50")), fmt_latency(stats.get("p99")),
                     fmt_time(d["created_at"])])
    return rows


def cmd_endpoints_ls(args: argparse.Namespace) -> int:
    endpoints = open_workspace().endpoints(all=args.all)
    if args.json:
        print(dump_json([e.to_dict() for e in endpoints]))
    elif not endpoints:
        print("no endpoints" + ("" if args.all else " serving (--all lists stopped ones too)"))
    else:
        print(text_table(_endpoint_rows(endpoints),
                         ["name", "id", "status", "model", "url", "requests", "errors", "p50",
                          "p99", "created"]))
    return 0


def cmd_endpoints_show(args: argparse.Namespace) -> int:
    endpoint = open_workspace().get_endpoint(args.endpoint)
    shown = {**endpoint.to_dict(), "key": endpoint.key}
    if args.json:
        print(dump_json(shown))
        return 0
    for field, value in shown.items():
        if field == "error" and value:
            print(f"error:\n{value}")
        elif value is not None:
            print(f"{field}: {json.dumps(value) if isinstance(value, dict) else value}")
    return 0


def cmd_endpoints_logs(args: argparse.Namespace) -> int:
    print(open_workspace().get_endpoint(args.endpoint).logs(tail=args.tail))
    return 0


def cmd_endpoints_delete(args: argparse.Namespace) -> int:
    endpoint = open_workspace().get_endpoint(args.endpoint)
    endpoint.delete()
    print(f"endpoint {endpoint.name} ({endpoint.id}) {endpoint.status}")
    return 0


def add_commands(sub: Any) -> None:
    deploy = sub.add_parser("deploy", help="serve a registered model as an HTTP endpoint")
    deploy.add_argument("model", help="NAME, NAME:VERSION or NAME@ALIAS")
    deploy.add_argument("--entry", help="entry script with init() and run(raw_data) "
                                        "(default: chosen by the model's files)")
    deploy.add_argument("--name", help="endpoint name (default: the model's); deploying a "
                                       "served name swaps it to the new version")
    deploy.add_argument("--host", default="127.0.0.1")
    deploy.add_argument("--port", type=int, default=0, help="default: a free port")
    deploy.add_argument("--cores", type=float, default=1)
    deploy.add_argument("--memory", help="address-space limit per worker, e.g. 2G")
    deploy.add_argument("--replicas", type=int, default=1,
                        help="worker processes (ray: Serve replicas, where autoscaling starts)")
    deploy.add_argument("--target", help="local (default) or ray (Ray Serve)")
    deploy.add_argument("--min-replicas", type=int, help="ray: autoscaling lower bound")
    deploy.add_argument("--max-replicas", type=int, help="ray: autoscaling upper bound")
    deploy.add_argument("--no-auth", action="store_true",
                        help="no key (refused unless bound to a loopback address)")
    deploy.add_argument("--wait", action=argparse.BooleanOptionalAction, default=True,
                        help="return once it serves (default) or at once")
    deploy.add_argument("--json", action="store_true")
    deploy.set_defaults(func=cmd_deploy)

    endpoints = sub.add_parser("endpoints", help="list, inspect and delete endpoints")
    verbs = endpoints.add_subparsers(dest="endpoints_command", metavar="VERB",
                                     parser_class=Parser)
    verbs.required = True
    ls = verbs.add_parser("ls", help="endpoints starting or serving")
    ls.add_argument("--all", action="store_true", help="stopped and failed ones too")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_endpoints_ls)
    show = verbs.add_parser("show", help="everything about one endpoint, with its key")
    show.add_argument("endpoint", help="name, id or a unique prefix")
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=cmd_endpoints_show)
    logs = verbs.add_parser("logs", help="the endpoint's log")
    logs.add_argument("endpoint")
    logs.add_argument("--tail", type=int, help="only the last N lines")
    logs.set_defaults(func=cmd_endpoints_logs)
    delete = verbs.add_parser("delete", help="stop the endpoint and free its port")
    delete.add_argument("endpoint")
    delete.set_defaults(func=cmd_endpoints_delete)
