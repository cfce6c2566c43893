#!/usr/bin/env node
// RRpc load generator over the official Alibaba Cloud Node.js SDKs, for comparison
// with the rrpc Lua module. Prints one JSON line on standard output; see README.md.
'use strict';

const http = require('http');
const https = require('https');

const USAGE = `usage: node rrpc-bench.js --sdk pop-core|iot20180120 --endpoint http://127.0.0.1:P
         --key ID --secret S --product PK --device DN --calls N --concurrency C
         [--timeout 5000] [--read-timeout MS] [--connect-timeout MS] [--payload TEXT]
         [--instance ID] [--dump-ids]
  --timeout          the RRpc Timeout parameter in ms (not range-checked), default 5000
  --read-timeout     the SDK's read timeout in ms, default Timeout + 5000
  --connect-timeout  the SDK's connect timeout in ms, default the read timeout (httpx
                     also uses it as the socket inactivity timeout: keep it >= Timeout)
  --payload          text sent Base64-encoded as RequestBase64Byte, default "ping"
  --instance         IotInstanceId, sent when given
  --dump-ids         add "message_ids": [[RequestId, String(MessageId)], ...]`;

function die(msg) {
  process.stderr.write(`rrpc-bench: ${msg}\n${USAGE}\n`);
  process.exit(2);
}

function parseArgs(argv) {
  const flags = new Set(['dump-ids', 'help']);
  const valued = new Set(['sdk', 'endpoint', 'key', 'secret', 'product', 'device', 'calls',
    'concurrency', 'timeout', 'read-timeout', 'connect-timeout', 'payload', 'instance']);
  const o = {};
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (!a.startsWith('--')) die(`unexpected argument: ${a}`);
    let name = a.slice(2);
    let value;
    const eq = name.indexOf('=');
    if (eq >= 0) { value = name.slice(eq + 1); name = name.slice(0, eq); }
    if (flags.has(name)) {
      if (value !== undefined) die(`--${name} takes no value`);
      o[name] = true;
    } else if (valued.has(name)) {
      if (value === undefined) {
        if (i + 1 >= argv.length) die(`--${name} needs a value`);
        value = argv[++i];
      }
      o[name] = value;
    } else {
      die(`unknown option: --${name}`);
    }
  }
  if (o.help) { process.stdout.write(USAGE + '\n'); process.exit(0); }
  for (const req of ['sdk', 'endpoint', 'key', 'secret', 'product', 'device', 'calls', 'concurrency']) {
    if (o[req] === undefined) die(`--${req} is required`);
  }
  if (o.sdk !== 'pop-core' && o.sdk !== 'iot20180120') die(`--sdk must be pop-core or iot20180120, not ${o.sdk}`);
  const posInt = (name, v) => {
    if (!/^[0-9]+$/.test(v) || Number(v) < 1 || !Number.isSafeInteger(Number(v))) {
      die(`--${name} must be a positive integer, not '${v}'`);
    }
    return Number(v);
  };
  o.calls = posInt('calls', o.calls);
  o.concurrency = posInt('concurrency', o.concurrency);
  // Not range-checked: the emulator's answer to a bad Timeout is worth seeing too.
  o.timeout = posInt('timeout', o.timeout === undefined ? '5000' : o.timeout);
  o.readTimeout = o['read-timeout'] === undefined ? o.timeout + 5000 : posInt('read-timeout', o['read-timeout']);
  o.connectTimeout = o['connect-timeout'] === undefined ? o.readTimeout : posInt('connect-timeout', o['connect-timeout']);
  o.payload = o.payload === undefined ? 'ping' : o.payload;
  let url;
  try { url = new URL(o.endpoint); } catch (e) { die(`bad --endpoint: ${o.endpoint}`); }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') die('--endpoint must be http:// or https://');
  if (url.pathname !== '/' || url.search) die('--endpoint must not have a path or a query');
  o.url = url;
  return o;
}

// Each maker returns async call() -> { requestId, rrpcCode, code, messageId }
// (code: the error Code of a refused call); SDK exceptions propagate.

function makePopCore(o) {
  const RPCClient = require('@alicloud/pop-core');
  const client = new RPCClient({
    accessKeyId: o.key,
    accessKeySecret: o.secret,
    endpoint: o.endpoint, // scheme required; a trailing "/" is stripped; requests go to endpoint + "/"
    apiVersion: '2018-01-20',
  });
  // pop-core already makes its own keep-alive agent (keepAlive, keepAliveMsecs 3000,
  // unlimited sockets) and uses it unless opts.agent is given; we pass ours, capped at C.
  const Agent = o.url.protocol === 'https:' ? https.Agent : http.Agent;
  const agent = new Agent({ keepAlive: true, maxSockets: o.concurrency });
  const params = {
    ProductKey: o.product,
    DeviceName: o.device,
    RequestBase64Byte: Buffer.from(o.payload, 'utf8').toString('base64'),
    Timeout: o.timeout,
  };
  if (o.instance !== undefined) params.IotInstanceId = o.instance;
  // method POST: every parameter (Signature too) goes in an x-www-form-urlencoded body.
  // opts go to httpx as they are: `timeout` would set both; readTimeout/connectTimeout
  // each (the other then defaults to 3000). pop-core never retries.
  const opts = { method: 'POST', readTimeout: o.readTimeout, connectTimeout: o.connectTimeout, agent };
  return async function call() {
    try {
      // The response is parsed with json-bigint: MessageId becomes a BigNumber.
      const r = await client.request('RRpc', params, opts);
      return { requestId: r.RequestId, rrpcCode: r.RrpcCode, code: r.Success === false ? r.Code : undefined, messageId: r.MessageId };
    } catch (err) {
      if (err.data && err.data.Code) {
        // any JSON answer with a Code (HTTP 200 Success:false or 4xx/5xx) is thrown
        return { requestId: err.data.RequestId, code: err.data.Code, messageId: err.data.MessageId };
      }
      throw err;
    }
  };
}

function makeIot(o) {
  const Iot = require('@alicloud/iot20180120');
  const OpenApi = require('@alicloud/openapi-client');
  const { RuntimeOptions } = require('@alicloud/tea-util');
  const client = new Iot.default(new OpenApi.Config({
    accessKeyId: o.key,
    accessKeySecret: o.secret,
    endpoint: o.url.host, // host[:port], no scheme: it is also sent as the Host header
    protocol: o.url.protocol.slice(0, -1),
    regionId: 'cn-shanghai',
  }));
  const request = new Iot.RRpcRequest({
    productKey: o.product,
    deviceName: o.device,
    requestBase64Byte: Buffer.from(o.payload, 'utf8').toString('base64'),
    timeout: o.timeout,
    iotInstanceId: o.instance,
  });
  // No agent can be passed: @alicloud/tea-typescript's doAction uses httpx's shared
  // module-level http.Agent({keepAlive: true}) (unlimited sockets). maxIdleConns is
  // copied into the runtime object but nothing reads it; RuntimeOptions.keepAlive is not
  // even copied by openapi-client's doRequest.
  const runtime = new RuntimeOptions({
    readTimeout: o.readTimeout,
    connectTimeout: o.connectTimeout,
    maxIdleConns: o.concurrency,
    autoretry: false,
  });
  return async function call() {
    try {
      // Signature V3 (ACS3-HMAC-SHA256); every parameter in the query string, empty body.
      // The body is parsed with JSON.parse: MessageId becomes a (rounded) double.
      const r = await client.rRpcWithOptions(request, runtime);
      const b = r.body || {};
      return {
        requestId: b.requestId || (r.headers && r.headers['x-acs-request-id']),
        rrpcCode: b.rrpcCode,
        code: b.success === false ? b.code : undefined,
        messageId: b.messageId,
      };
    } catch (err) {
      // HTTP 4xx/5xx with a JSON body: $tea error with code and data.
      if (err.data && (err.data.Code || err.data.code)) {
        return { requestId: err.data.RequestId, code: err.data.Code || err.data.code, messageId: err.data.MessageId };
      }
      throw err;
    }
  };
}

function errorKey(err) {
  // network errors (ECONNRESET...), httpx's RequestTimeoutError / ReadTimeout, SyntaxError...
  if (err && typeof err.code === 'string' && err.code) return err.code;
  if (err && err.name) return err.name;
  return 'Error';
}

function midString(m) {
  if (m === undefined || m === null) return null;
  if (typeof m === 'object' && typeof m.toFixed === 'function') return m.toFixed(); // BigNumber
  return String(m);
}

async function main() {
  const o = parseArgs(process.argv.slice(2));
  const call = o.sdk === 'pop-core' ? makePopCore(o) : makeIot(o);

  const errors = {};
  const ids = o['dump-ids'] ? [] : null;
  let ok = 0;
  let midUnsafe = 0;
  let midChecked = 0;
  let next = 0;

  async function worker() {
    while (next < o.calls) {
      next++;
      let r;
      try {
        r = await call();
      } catch (err) {
        const k = errorKey(err);
        errors[k] = (errors[k] || 0) + 1;
        if (process.env.RRPC_BENCH_DEBUG) process.stderr.write(`${err.stack || err}\n`);
        continue;
      }
      if (r.code === undefined && r.rrpcCode === 'SUCCESS') {
        ok++;
      } else {
        const k = r.code || r.rrpcCode || 'NoRrpcCode';
        errors[k] = (errors[k] || 0) + 1;
      }
      if (r.messageId !== undefined && r.messageId !== null) {
        midChecked++;
        if (typeof r.messageId === 'number' && !Number.isSafeInteger(r.messageId)) midUnsafe++;
        if (ids) ids.push([r.requestId === undefined ? null : r.requestId, midString(r.messageId)]);
      }
    }
  }

  const rssBefore = process.memoryUsage().rss;
  const cpu0 = process.cpuUsage();
  const t0 = process.hrtime.bigint();
  const workers = [];
  for (let i = 0; i < Math.min(o.concurrency, o.calls); i++) workers.push(worker());
  await Promise.all(workers);
  const wall = Number(process.hrtime.bigint() - t0) / 1e9;
  const cpu = process.cpuUsage(cpu0);

  const out = {
    sdk: o.sdk,
    calls: o.calls,
    ok,
    errors,
    wall_s: Number(wall.toFixed(3)),
    cpu_user_s: Number((cpu.user / 1e6).toFixed(3)),
    cpu_sys_s: Number((cpu.system / 1e6).toFixed(3)),
    rss_before_kb: Math.round(rssBefore / 1024),
    peak_rss_kb: process.resourceUsage().maxRSS,
    // MessageIds that arrived as JS numbers beyond 2^53 (already rounded), of those seen
    mid_unsafe: midUnsafe,
    mid_seen: midChecked,
  };
  if (ids) out.message_ids = ids;
  // Exit once the line is out: keep-alive sockets would keep the loop alive for a while,
  // and exiting at once truncates a long line written to a pipe.
  process.stdout.write(JSON.stringify(out) + '\n', () => process.exit(0));
}

main().catch((err) => {
  process.stderr.write(`rrpc-bench: ${err.stack || err}\n`);
  process.exit(1);
});
