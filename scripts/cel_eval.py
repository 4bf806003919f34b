#!/usr/bin/env python3
"""Evaluates a ValidatingAdmissionPolicy's CEL as the API server would, for tests.

Reads JSON on stdin: {"policy": <rendered ValidatingAdmissionPolicy>, "cases": [{"name",
"request", "object", "oldObject"}]}. Prints a JSON list, one entry per case:
{"name", "matched": bool (every matchCondition true), "denied": [messages of the
validations that are false]}. An expression that fails to evaluate counts as false
(failurePolicy: Fail), with the error in the message.
"""

import json
import sys

import celpy


def program(env, expression):
    return env.program(env.compile(expression))


def holds(prog, activation):
    try:
        return bool(prog.evaluate(activation)), None
    except Exception as error:  # noqa: BLE001 - any evaluation error denies
        return False, str(error)


def main():
    data = json.load(sys.stdin)
    spec = data["policy"]["spec"]
    env = celpy.Environment()
    conditions = [program(env, c["expression"]) for c in spec.get("matchConditions", [])]
    validations = [(program(env, v["expression"]), v.get("message", v["expression"]))
                   for v in spec["validations"]]
    results = []
    for case in data["cases"]:
        activation = {key: celpy.json_to_cel(case[key]) for key in ("request", "object", "oldObject")}
        matched = all(holds(c, activation)[0] for c in conditions)
        denied = []
        if matched:
            for prog, message in validations:
                ok, error = holds(prog, activation)
                if not ok:
                    denied.append(message if error is None else f"{message} ({error})")
        results.append({"name": case["name"], "matched": matched, "denied": denied})
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
