#!/usr/bin/env node
// Read a Config that etcdconfig published into a ConfigMap and refuse it unless its
// content matches the published checksum: "sha256:" + hex SHA-256 of the RFC 8785
// canonical JSON of the data (the `canonicalize` package from npm).
//
//   npm ci
//   kubectl get configmap payments-config -o json | node consumer.mjs --configmap-json -
//   node consumer.mjs --file /etc/payments/config.json --checksum sha256:23be9a87...
//   node consumer.mjs --file config.json --print-checksum
//
// It prints the data only when it verifies. Exit codes: 0 verified, 1 error (unreadable,
// not JSON), 2 usage, 3 checksum mismatch (the content is refused).
// The Go example (../go-consumer) also reads from the API and watches for changes.

import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";

import canonicalize from "canonicalize";

const CHECKSUM_ANNOTATION = "etcdconfig.io/checksum";
const VERSION_ANNOTATION = "etcdconfig.io/version";

class Mismatch extends Error {}
class Usage extends Error {}

/** "sha256:" + hex SHA-256 of the RFC 8785 form of a JSON text. */
export function checksum(jsonText) {
  let value;
  try {
    value = JSON.parse(jsonText);
  } catch (err) {
    throw new Error(`not valid JSON: ${err.message}`);
  }
  return "sha256:" + createHash("sha256").update(canonicalize(value), "utf8").digest("hex");
}

/** The parsed data, or Mismatch when the content does not hash to the expected checksum. */
export function verify({ content, expected, source }) {
  const got = checksum(content);
  if (got !== expected.trim()) {
    throw new Mismatch(
      `checksum mismatch: ${source} hashes to ${got}, published as ${expected}; refusing it`,
    );
  }
  return JSON.parse(content);
}

function read(path) {
  return readFileSync(path === "-" ? 0 : path, "utf8");
}

function fromConfigMap(raw, key, source) {
  const cm = JSON.parse(raw);
  const meta = cm.metadata ?? {};
  const where = `${meta.namespace}/${meta.name}`;
  const content = (cm.data ?? {})[key];
  if (content === undefined) throw new Error(`ConfigMap ${where} has no key "${key}"`);
  const expected = (meta.annotations ?? {})[CHECKSUM_ANNOTATION];
  if (!expected) {
    throw new Error(`ConfigMap ${where} has no ${CHECKSUM_ANNOTATION} annotation`);
  }
  const version = (meta.annotations ?? {})[VERSION_ANNOTATION] ?? "?";
  return { content, expected, version, source: `ConfigMap ${where} key ${key}` };
}

function snapshot(opts) {
  const sources = [opts.file, opts["configmap-json"]].filter((s) => s !== undefined);
  if (sources.length !== 1) throw new Usage("give exactly one of --file, --configmap-json");
  if (opts["configmap-json"] !== undefined) {
    return fromConfigMap(read(opts["configmap-json"]), opts.key, opts["configmap-json"]);
  }
  let expected = opts.checksum;
  if (opts["checksum-file"] !== undefined) expected = read(opts["checksum-file"]);
  if (expected === undefined && !opts["print-checksum"]) {
    throw new Usage("--file needs --checksum or --checksum-file");
  }
  return { content: read(opts.file), expected, version: "?", source: opts.file };
}

function main(argv) {
  let opts;
  try {
    ({ values: opts } = parseArgs({
      args: argv,
      options: {
        file: { type: "string" },
        checksum: { type: "string" },
        "checksum-file": { type: "string" },
        "configmap-json": { type: "string" },
        key: { type: "string", default: "config.json" },
        "print-checksum": { type: "boolean", default: false },
        compact: { type: "boolean", default: false },
      },
    }));
  } catch (err) {
    console.error(`usage: ${err.message}`);
    return 2;
  }
  try {
    const snap = snapshot(opts);
    if (opts["print-checksum"]) {
      console.log(checksum(snap.content));
      return 0;
    }
    const data = verify(snap);
    console.error(`verified ${snap.source} version ${snap.version} (${snap.expected.trim()})`);
    console.log(opts.compact ? JSON.stringify(data) : JSON.stringify(data, null, 2));
    return 0;
  } catch (err) {
    if (err instanceof Usage) {
      console.error(`usage: ${err.message}`);
      return 2;
    }
    console.error(`error: ${err.message}`);
    return err instanceof Mismatch ? 3 : 1;
  }
}

process.exitCode = main(process.argv.slice(2));
