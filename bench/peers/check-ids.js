#!/usr/bin/env node
// Compares the MessageIds an SDK handed to its caller (rrpc-bench.js --dump-ids) with
// the ones the emulator sent (the `rid=<RequestId> mid=<MessageId>` access-log fields).
//   node check-ids.js RESULT.json ACCESS.log
// RESULT.json: the JSON line printed by rrpc-bench.js. Prints one JSON line:
//   {"ids":N, "in_log":M, "exact":E, "wrong":W, "not_in_log":X, "examples":[[rid, sdk, log], ...]}
// and exits 1 when any id is wrong or missing from the log.
'use strict';

const fs = require('fs');

if (process.argv.length !== 4) {
  process.stderr.write('usage: node check-ids.js RESULT.json ACCESS.log\n');
  process.exit(2);
}
const text = fs.readFileSync(process.argv[2], 'utf8').trim().split('\n').pop();
const result = JSON.parse(text); // our own ids are strings, so JSON.parse is exact here
if (!Array.isArray(result.message_ids)) {
  process.stderr.write('check-ids: no "message_ids" in the result (run rrpc-bench.js with --dump-ids)\n');
  process.exit(2);
}

const logged = new Map();
let withFields = 0;
for (const line of fs.readFileSync(process.argv[3], 'utf8').split('\n')) {
  const rid = /(?:^|\s)rid=(\S+)/.exec(line);
  const mid = /(?:^|\s)mid=(\S+)/.exec(line);
  if (!rid) continue;
  withFields++;
  if (rid[1] !== '-') logged.set(rid[1], mid ? mid[1] : '-');
}
if (withFields === 0) {
  process.stderr.write('check-ids: the access log has no rid= fields (emulator too old?)\n');
  process.exit(2);
}

let inLog = 0, exact = 0, wrong = 0, notInLog = 0;
const examples = [];
for (const [rid, mid] of result.message_ids) {
  if (!logged.has(rid)) { notInLog++; continue; }
  inLog++;
  const want = logged.get(rid);
  if (want === mid) {
    exact++;
  } else {
    wrong++;
    if (examples.length < 5) examples.push([rid, mid, want]);
  }
}
process.stdout.write(JSON.stringify({
  sdk: result.sdk, ids: result.message_ids.length, in_log: inLog, exact, wrong, not_in_log: notInLog, examples,
}) + '\n');
process.exit(wrong || notInLog ? 1 : 0);
