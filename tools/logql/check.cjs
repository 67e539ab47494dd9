#!/usr/bin/env node
// Parse LogQL expressions with Grafana's grammar (@grafana/lezer-logql).
//
// stdin:  a JSON array of strings, or (if stdin is not JSON) one expression per line.
// stdout: a JSON array, one {"expr", "ok", "error"} per input, in order.
// exit:   0 if every expression parsed, 1 if any did not, 2 on bad input.
//
// The grammar is error-tolerant: it always returns a tree and marks the
// spots it could not parse with error nodes. An expression is valid when
// the tree has no error node and its top node is a complete LogQL query.
"use strict";
const { parser } = require("@grafana/lezer-logql");

function check(expr) {
  if (typeof expr !== "string" || expr.trim() === "") {
    return { expr, ok: false, error: "empty expression" };
  }
  const tree = parser.parse(expr);
  let error = null;
  tree.iterate({
    enter(node) {
      if (error === null && node.type.isError) {
        const near = expr.slice(Math.max(0, node.from - 10), node.to + 10);
        error = `syntax error at offset ${node.from} near ${JSON.stringify(near)}`;
      }
    },
  });
  const top = tree.topNode.firstChild;
  if (error === null && (!top || top.to !== expr.length && expr.slice(top.to).trim() !== "")) {
    error = "expression does not parse to one complete query";
  }
  return { expr, ok: error === null, error };
}

let input = "";
process.stdin.setEncoding("utf8");
process.stdin.on("data", (chunk) => { input += chunk; });
process.stdin.on("end", () => {
  let exprs;
  try {
    exprs = JSON.parse(input);
    if (!Array.isArray(exprs)) throw new Error("not an array");
  } catch (_) {
    exprs = input.split("\n").filter((line) => line.trim() !== "");
  }
  const results = exprs.map(check);
  process.stdout.write(JSON.stringify(results, null, 1) + "\n");
  process.exitCode = results.every((r) => r.ok) ? 0 : 1;
});
