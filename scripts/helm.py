#!/usr/bin/env python3
"""`helm template` and `helm lint` for machines without a helm binary.

Runs Helm 4 through helm-python-sdk (installed by scripts/helm-venv.sh):

    target/helm-venv/bin/python scripts/helm.py template charts/spot-guard -f my.yaml
    target/helm-venv/bin/python scripts/helm.py template charts/spot-guard -f my.yaml --json
    target/helm-venv/bin/python scripts/helm.py template charts/spot-guard -f my.yaml --notes
    target/helm-venv/bin/python scripts/helm.py lint charts/spot-guard -f my.yaml
    target/helm-venv/bin/python scripts/helm.py values -f a.yaml -f b.yaml

`template` checks the values against values.schema.json first, as `helm install` does,
and prints the manifests (or, with --json, a JSON array of the rendered objects, parsed
by Helm's own YAML reader; or, with --notes, the rendered release notes, NOTES.txt).
Several -f files are merged in order, as `helm install -f a.yaml -f b.yaml` does; `values`
prints them merged, as JSON. Exit status 1 with the reason on stderr when Helm refuses.
"""

import argparse
import json
import sys

import helm_python as helm


def load_values(files):
    values = {}
    for path in files:
        with open(path, encoding="utf-8") as handle:
            layer = helm.values_from_yaml(handle.read())
        values = merge(values, layer)
    return values


def merge(base, layer):
    merged = dict(base)
    for key, value in layer.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def documents(manifest):
    """The YAML documents of one rendered template, without empty ones."""
    chunks, current = [], []
    for line in manifest.splitlines():
        if line.strip() == "---":
            chunks.append("\n".join(current))
            current = []
        else:
            current.append(line)
    chunks.append("\n".join(current))
    return [chunk for chunk in chunks if any(
        line.strip() and not line.lstrip().startswith("#") for line in chunk.splitlines()
    )]


def template(args):
    values = load_values(args.values)
    with helm.Chart.load(args.chart) as chart:
        chart.validate_schema(values)
        rendered = chart.render(values, name=args.name, namespace=args.namespace, is_install=True)
    if args.notes:
        notes = [text for path, text in rendered.items() if path.endswith("/NOTES.txt")]
        sys.stdout.write("".join(notes))
        return 0
    # NOTES.txt and helpers are not manifests.
    sources = sorted(path for path in rendered if path.endswith((".yaml", ".yml")))
    if args.json:
        objects = []
        for source in sources:
            for document in documents(rendered[source]):
                objects.append(helm.values_from_yaml(document))
        json.dump(objects, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        for source in sources:
            for document in documents(rendered[source]):
                sys.stdout.write(f"---\n# Source: {source}\n{document.strip()}\n")
    return 0


def lint(args):
    values = load_values(args.values)
    report = helm.lint(
        args.chart,
        values,
        strict=True,
        namespace=args.namespace,
        kube_version=args.kube_version,
    )
    severities = {0: "UNKNOWN", 1: "INFO", 2: "WARNING", 3: "ERROR"}
    failed = False
    for message in report.get("messages") or []:
        severity = message.get("severity", 0)
        failed |= severity >= 2
        print(f"[{severities.get(severity, severity)}] {message.get('path')}: {message.get('error')}")
    for error in report.get("errors") or []:
        failed = True
        print(f"[ERROR] {error}")
    linted = report.get("total_charts_linted", 0)
    if linted < 1:
        # An empty report is not a pass: nothing was looked at.
        failed = True
        print(f"[ERROR] {args.chart}: no chart was linted")
    print(f"{linted} chart(s) linted, {'failed' if failed else 'no failures'}")
    return 1 if failed else 0


def show_values(args):
    """The values files merged, as JSON: what the chart's templates would be given on top
    of its defaults, read by Helm's own YAML reader."""
    json.dump(load_values(args.values), sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("template", "lint"):
        command = sub.add_parser(name)
        command.add_argument("chart")
        command.add_argument("-f", "--values", action="append", default=[])
        command.add_argument("--namespace", default="kube-system")
        if name == "template":
            command.add_argument("--name", default="spot-guard")
            output = command.add_mutually_exclusive_group()
            output.add_argument("--json", action="store_true")
            output.add_argument("--notes", action="store_true")
        else:
            command.add_argument("--kube-version", default="v1.33.0")
    sub.add_parser("values").add_argument("-f", "--values", action="append", default=[])
    args = parser.parse_args()
    commands = {"template": template, "lint": lint, "values": show_values}
    try:
        return commands[args.command](args)
    except helm.HelmError as error:
        print(f"helm {args.command} refused: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
