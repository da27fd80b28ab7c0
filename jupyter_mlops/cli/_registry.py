"""CLI verbs of the registry: ``models ls|show|download|tag|register|delete``,
``datasets ls|show|register`` and ``runs diff``. ``cli.build_parser`` adds them.

Only argparse is imported here; the registry itself is imported when a verb runs, so the
other commands start no slower for it.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .._format import dump_json, fmt_time, human_bytes
from .._format import text_table as table
from .._inputs import parse_tags
from ._common import Parser, UsageError, open_workspace


def add_commands(sub: Any, runs_sub: Any) -> None:
    """Add ``models``, ``datasets`` and ``runs diff`` to the ``jupyter mlops`` parser."""
    models = sub.add_parser("models", help="the model registry")
    verbs = models.add_subparsers(dest="models_command", metavar="VERB", parser_class=Parser)
    verbs.required = True

    ls = verbs.add_parser("ls", help="list model versions (by name, newest first)")
    ls.add_argument("name", nargs="?", help="only this model")
    ls.add_argument("--tag", action="append", metavar="KEY=VALUE", help="only versions tagged so")
    ls.add_argument("--alias", help="only the version with this alias")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_models_ls)

    show = verbs.add_parser("show", help="one version: files, tags, aliases and lineage")
    show.add_argument("model", metavar="NAME[:VERSION]", help="version: number, latest or alias")
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=cmd_models_show)

    download = verbs.add_parser("download", help="copy a version's files here (or to DEST)")
    download.add_argument("model", metavar="NAME[:VERSION]")
    download.add_argument("dest", nargs="?", default=".",
                          help="an existing folder to put it in, or the new path")
    download.add_argument("--force", action="store_true", help="replace an existing copy")
    download.set_defaults(func=cmd_models_download)

    tag = verbs.add_parser("tag", help="set or remove tags and aliases of a version")
    tag.add_argument("model", metavar="NAME[:VERSION]")
    tag.add_argument("tags", nargs="*", metavar="KEY=VALUE")
    tag.add_argument("--remove", action="append", default=[], metavar="KEY")
    tag.add_argument("--alias", action="append", default=[], metavar="ALIAS",
                     help="point this alias (production, staging, ...) at the version")
    tag.add_argument("--remove-alias", action="append", default=[], metavar="ALIAS")
    tag.set_defaults(func=cmd_models_tag)

    register = verbs.add_parser("register", help="register a file or folder as a new version")
    register.add_argument("name")
    register.add_argument("path", help="a local path, or with --run an artifact of that run")
    register.add_argument("--run", help="the run that made it (PATH is then its artifact)")
    register.add_argument("--tag", action="append", metavar="KEY=VALUE")
    register.add_argument("--description")
    register.add_argument("--reuse", action="store_true",
                          help="return the existing version when the content is identical")
    register.add_argument("--json", action="store_true")
    register.set_defaults(func=cmd_models_register)

    delete = verbs.add_parser("delete", help="delete one version (NAME:VERSION, explicitly)")
    delete.add_argument("model", metavar="NAME:VERSION")
    delete.set_defaults(func=cmd_models_delete)

    datasets = sub.add_parser("datasets", help="versioned datasets")
    dverbs = datasets.add_subparsers(dest="datasets_command", metavar="VERB",
                                     parser_class=Parser)
    dverbs.required = True
    dls = dverbs.add_parser("ls", help="list dataset versions")
    dls.add_argument("name", nargs="?")
    dls.add_argument("--json", action="store_true")
    dls.set_defaults(func=cmd_datasets_ls)
    dshow = dverbs.add_parser("show", help="one version: location, hash and profile")
    dshow.add_argument("dataset", metavar="NAME[:VERSION]")
    dshow.add_argument("--json", action="store_true")
    dshow.set_defaults(func=cmd_datasets_show)
    dreg = dverbs.add_parser("register", help="record a new version if the content changed")
    dreg.add_argument("name")
    dreg.add_argument("path", help="a local file or folder, or an fsspec URL")
    dreg.add_argument("--description")
    dreg.add_argument("--tag", action="append", metavar="KEY=VALUE")
    dreg.add_argument("--copy", action="store_true",
                      help="snapshot the data into the artifact store (default: a reference)")
    dreg.add_argument("--no-profile", dest="profile", action="store_false")
    dreg.add_argument("--json", action="store_true")
    dreg.set_defaults(func=cmd_datasets_register)

    diff = runs_sub.add_parser("diff", help="differences between two runs")
    diff.add_argument("run_a", metavar="RUN_A")
    diff.add_argument("run_b", metavar="RUN_B")
    diff.add_argument("--json", action="store_true")
    diff.set_defaults(func=cmd_runs_diff)


# -- models ---------------------------------------------------------------------------------


def cmd_models_ls(args: argparse.Namespace) -> int:
    ws = open_workspace()
    found = ws.models.list(name=args.name, tags=parse_tags(args.tag), alias=args.alias)
    if args.json:
        print(dump_json([m.info() for m in found]))
        return 0
    if not found:
        print("no model versions match" if args.name or args.tag or args.alias
              else f"no models registered in {ws.location.directory}")
        return 0
    rows = [[m.name, str(m.version), ", ".join(m._row["aliases"]),
             ", ".join(f"{k}={v}" for k, v in m._row["tags"].items())[:40],
             str(m.file_count), human_bytes(m.size), m.run_id or "", fmt_time(m.created_at)]
            for m in found]
    print(table(rows, ["NAME", "VERSION", "ALIASES", "TAGS", "FILES", "SIZE", "RUN", "CREATED"]))
    return 0


def format_model(model: Any) -> str:
    info = model.info()
    lines = [f"Model {model.ref}",
             f"  sha256      {model.sha256}",
             f"  files       {model.file_count} ({human_bytes(model.size)}), {model.kind} "
             f"{model.root_name!r}",
             f"  source      {model.source}",
             f"  run         {model.run_id or ''}",
             f"  created     {fmt_time(model.created_at)}",
             f"  aliases     {', '.join(info['aliases'])}"]
    if model.description:
        lines.append(f"  description {model.description}")
    if info["tags"]:
        lines.append("\ntags:")
        lines += [f"  {k} = {v}" for k, v in info["tags"].items()]
    files = model.files()
    lines.append("\nfiles:")
    lines += [f"  {f['path']}  {human_bytes(f['size'])}  {f['sha256'][:12]}" for f in files[:50]]
    if len(files) > 50:
        lines.append(f"  ... and {len(files) - 50} more")
    lines.append("\nlineage:")
    lines += ["  " + line for line in model.lineage().text().splitlines()]
    return "\n".join(lines)


def cmd_models_show(args: argparse.Namespace) -> int:
    model = open_workspace().models.get(args.model)
    if args.json:
        print(dump_json({**model.info(), "files": model.files(),
                         "lineage": model.lineage().to_dict()}))
    else:
        print(format_model(model))
    return 0


def cmd_models_download(args: argparse.Namespace) -> int:
    model = open_workspace().models.get(args.model)
    path = model.download(args.dest, overwrite=args.force)
    print(f"{model.ref} ({model.file_count} files, {human_bytes(model.size)}) → {path}",
          file=sys.stderr)
    print(path)
    return 0


def cmd_models_tag(args: argparse.Namespace) -> int:
    if not (args.tags or args.remove or args.alias or args.remove_alias):
        raise UsageError("models tag needs KEY=VALUE, --remove KEY, --alias A or "
                         "--remove-alias A")
    model = open_workspace().models.get(args.model)
    model.set_tags(parse_tags(args.tags), remove=args.remove)
    for alias in args.remove_alias:
        model.remove_alias(alias)
    for alias in args.alias:
        model.set_alias(alias)
    tags = ", ".join(f"{k}={v}" for k, v in model.tags.items()) or "none"
    print(f"{model.ref}: tags {tags}; aliases {', '.join(model.aliases) or 'none'}")
    return 0


def cmd_models_register(args: argparse.Namespace) -> int:
    model = open_workspace().models.register(args.name, args.path, run=args.run,
                                             tags=parse_tags(args.tag),
                                             description=args.description, reuse=args.reuse)
    if args.json:
        print(dump_json(model.info()))
    else:
        print(f"registered {model.ref} ({model.file_count} files, {human_bytes(model.size)}, "
              f"sha256 {model.sha256[:12]})")
    return 0


def cmd_models_delete(args: argparse.Namespace) -> int:
    ws = open_workspace()
    model = ws.models.get(args.model)
    ws.models.delete(args.model)
    print(f"deleted {model.ref}")
    return 0


# -- datasets -------------------------------------------------------------------------------


def cmd_datasets_ls(args: argparse.Namespace) -> int:
    ws = open_workspace()
    found = ws.datasets.list(name=args.name)
    if args.json:
        print(dump_json([d.info() for d in found]))
        return 0
    if not found:
        print(f"no datasets registered in {ws.location.directory}")
        return 0
    rows = []
    for d in found:
        tables = d.profile.get("tables") or {}
        rows.append([d.name, str(d.version), str(d.file_count), human_bytes(d.size),
                     str(sum(t.get("rows", 0) for t in tables.values())) if tables else "",
                     ("snapshot of " if d.copied else "") + d.uri, fmt_time(d.created_at)])
    print(table(rows, ["NAME", "VERSION", "FILES", "SIZE", "ROWS", "LOCATION", "CREATED"]))
    return 0


def format_dataset(ds: Any) -> str:
    lines = [f"Dataset {ds.ref}",
             f"  location    {ds.uri}" + ("  (snapshot kept in the artifact store)"
                                           if ds.copied else "  (reference)"),
             f"  sha256      {ds.sha256}",
             f"  files       {ds.file_count} ({human_bytes(ds.size)}), {ds.kind}",
             f"  created     {fmt_time(ds.created_at)}"]
    if ds.description:
        lines.append(f"  description {ds.description}")
    tags = ds.tags
    if tags:
        lines.append("\ntags:")
        lines += [f"  {k} = {v}" for k, v in tags.items()]
    for relpath, tab in (ds.profile.get("tables") or {}).items():
        if "schema" not in tab:
            lines.append(f"\n{relpath}: {tab.get('error') or tab.get('note')}")
            continue
        lines.append(f"\n{relpath} ({tab['format']}): {tab['rows']} rows x {tab['columns']} "
                     "columns")
        rows = [[c["name"], c["dtype"], str(c["nulls"]),
                 *(str(c.get(k, "")) for k in ("min", "max", "mean"))] for c in tab["schema"]]
        lines += ["  " + ln for ln in table(
            rows, ["COLUMN", "DTYPE", "NULLS", "MIN", "MAX", "MEAN"]).splitlines()]
    if ds.profile.get("note"):
        lines.append(f"\nnote: {ds.profile['note']}")
    runs = ds.runs()
    if runs:
        lines.append("\nread by runs: " + ", ".join(r.id for r in runs[:20]))
    return "\n".join(lines)


def cmd_datasets_show(args: argparse.Namespace) -> int:
    ds = open_workspace().datasets.get(args.dataset)
    if args.json:
        print(dump_json({**ds.info(), "runs": [r.id for r in ds.runs()]}))
    else:
        print(format_dataset(ds))
    return 0


def cmd_datasets_register(args: argparse.Namespace) -> int:
    ws = open_workspace()
    before = ws.datasets.list(name=args.name)
    ds = ws.datasets.register(args.name, args.path, description=args.description,
                              tags=parse_tags(args.tag), copy=args.copy, profile=args.profile)
    created = not before or before[0].id != ds.id
    if args.json:
        print(dump_json({**ds.info(), "created": created}))
    elif created:
        print(f"registered {ds.ref} ({ds.file_count} files, {human_bytes(ds.size)}, "
              f"sha256 {ds.sha256[:12]})")
    else:
        print(f"unchanged: {ds.ref} already has this content (sha256 {ds.sha256[:12]})")
    return 0


# -- runs diff ------------------------------------------------------------------------------


def cmd_runs_diff(args: argparse.Namespace) -> int:
    diff = open_workspace().diff_runs(args.run_a, args.run_b)
    print(dump_json(diff.to_dict()) if args.json else diff.text())
    return 0
