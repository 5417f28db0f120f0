#!/usr/bin/env python3
"""Turns deploy/ files into JSON facts for the deploy tests (tests/tests/deploy_*.rs).

The checks themselves live in the Rust tests; this helper only does what Python's libraries do
better, using the packages scripts/test.sh installs into .test-env/py:

  k8s_facts.py yaml FILE...     every YAML document of the files, as a JSON array of
                                {"file", "index", "doc"} (PyYAML, safe loader)
  k8s_facts.py toml FILE        the TOML file as JSON (tomllib; TOML times become strings)
  k8s_facts.py promql           reads a JSON array of PromQL expressions on stdin and prints,
                                for each, {"expr", "error", "selectors", "groupings"}, parsed by
                                promql-parser (the Rust PromQL parser behind a Python binding):
                                  selectors: [{"name", "labels"}] every vector selector, with
                                             the label names of its matchers;
                                  groupings: [{"labels", "metrics", "created"}] for every
                                             `by (...)` and `on (...)`: the labels named, the
                                             metrics below it, and labels that label_replace
                                             creates below it.
"""

import json
import sys

import yaml


def load_yaml(paths):
    out = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for index, doc in enumerate(yaml.safe_load_all(f)):
                if doc is not None:
                    out.append({"file": path, "index": index, "doc": doc})
    return out


def metric_names(node, promql_parser):
    names = []

    def visit(n):
        if isinstance(n, promql_parser.VectorSelector) and n.name:
            names.append(n.name)

    promql_parser.walk(node, visit)
    return sorted(set(names))


def created_labels(node, promql_parser):
    labels = []

    def visit(n):
        if isinstance(n, promql_parser.Call) and n.func.name in ("label_replace", "label_join"):
            if len(n.args) > 1 and isinstance(n.args[1], promql_parser.StringLiteral):
                labels.append(n.args[1].val)

    promql_parser.walk(node, visit)
    return sorted(set(labels))


def analyse(expr, promql_parser):
    try:
        ast = promql_parser.parse(expr)
    except Exception as e:  # the parser raises ValueError; report any failure as data
        return {"expr": expr, "error": str(e), "selectors": [], "groupings": []}
    selectors = []
    groupings = []

    def visit(n):
        if isinstance(n, promql_parser.VectorSelector):
            labels = [m.name for m in n.matchers.matchers]
            for group in n.matchers.or_matchers or []:
                labels.extend(m.name for m in group)
            selectors.append({"name": n.name, "labels": sorted(set(labels))})
        elif isinstance(n, promql_parser.AggregateExpr):
            m = n.modifier
            if m is not None and m.type == promql_parser.AggModifierType.By:
                groupings.append(
                    {
                        "labels": list(m.labels),
                        "metrics": metric_names(n.expr, promql_parser),
                        "created": created_labels(n.expr, promql_parser),
                    }
                )
        elif isinstance(n, promql_parser.BinaryExpr):
            m = n.modifier
            matching = m.matching if m is not None else None
            if matching is not None and matching.type == promql_parser.LabelModifierType.Include:
                metrics = metric_names(n.lhs, promql_parser) + metric_names(n.rhs, promql_parser)
                created = created_labels(n.lhs, promql_parser) + created_labels(n.rhs, promql_parser)
                groupings.append(
                    {
                        "labels": list(matching.labels),
                        "metrics": sorted(set(metrics)),
                        "created": sorted(set(created)),
                    }
                )

    promql_parser.walk(ast, visit)
    return {"expr": expr, "error": None, "selectors": selectors, "groupings": groupings}


def main(argv):
    if len(argv) >= 2 and argv[1] == "yaml":
        json.dump(load_yaml(argv[2:]), sys.stdout)
        return 0
    if len(argv) == 3 and argv[1] == "toml":
        import tomllib

        with open(argv[2], "rb") as f:
            json.dump(tomllib.load(f), sys.stdout, default=str)
        return 0
    if len(argv) == 2 and argv[1] == "promql":
        import promql_parser

        exprs = json.load(sys.stdin)
        json.dump([analyse(e, promql_parser) for e in exprs], sys.stdout)
        return 0
    sys.stderr.write(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
