// Watchers for bench.scale, in Node so that the client is never the bottleneck.
//
// Usage: node bench/watchers.mjs URL SIDS WATCHERS
//   SIDS: "sid" or "prefix:count" (prefix0 .. prefix{count-1}); WATCHERS per sid.
// Each connection says hello with live: true and checks that seqs follow each
// other.  Prints JSON lines: {"ready": n} once every connection is welcomed,
// then reads commands on stdin:
//   "mark"      start counting latencies (events received from now on)
//   "expect N"  report once N events were received in all (since the start)
// and answers with {"report": {...}}: events, frames, gaps, latency p50/p99/max
// in ms (receipt time minus the event's ts), and when the last event arrived.
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";
import path from "node:path";
import readline from "node:readline";

const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(path.join(here, "..", "clients", "js", "package.json"));
const WebSocket = require("ws");
const { decode, encode } = require("@msgpack/msgpack");

const [url, sidSpec, perSid] = process.argv.slice(2);
let sids;
if (sidSpec.includes(":")) {
  const [prefix, count] = sidSpec.split(":");
  sids = Array.from({ length: Number(count) }, (_, i) => `${prefix}${i}`);
} else {
  sids = [sidSpec];
}
const watchers = Number(perSid);
const say = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");
const now = () => (performance.timeOrigin + performance.now()) / 1000;

let total = 0;
let frames = 0;
let gaps = 0;
let marked = false;
let lat = [];
let last = 0;
let expect = Infinity;
let welcomed = 0;
let reported = false;

function report() {
  if (reported) return;
  reported = true;
  const sorted = Float64Array.from(lat).sort();
  const q = (p) => (sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))] * 1000 : null);
  say({ report: { events: total, frames, gaps, measured: sorted.length, p50_ms: q(0.5), p99_ms: q(0.99), max_ms: q(1), last } });
  process.exit(0);
}

function onEvent(ev, conn) {
  if (conn.seq && ev.seq !== conn.seq + 1) gaps += 1;
  conn.seq = ev.seq;
  total += 1;
  if (marked) lat.push(now() - ev.ts);
  last = now();
}

for (const sid of sids) {
  for (let w = 0; w < watchers; w++) {
    const ws = new WebSocket(url, "wirepipe.v1", { perMessageDeflate: false, maxPayload: 64 * 1024 * 1024 });
    ws.binaryType = "nodebuffer";
    const conn = { seq: 0 };
    ws.on("open", () => ws.send(encode({ t: "hello", sid, live: true })));
    ws.on("message", (data) => {
      const f = decode(data);
      if (f.t === "ev") {
        frames += 1;
        onEvent(f, conn);
      } else if (f.t === "batch") {
        frames += 1;
        for (const ev of f.evs) onEvent(ev, conn);
      } else if (f.t === "welcome") {
        conn.seq = f.head;
        welcomed += 1;
        if (welcomed === sids.length * watchers) say({ ready: welcomed });
      }
      if (total >= expect) report();
    });
    ws.on("error", (err) => say({ error: String(err) }));
  }
}

readline.createInterface({ input: process.stdin }).on("line", (line) => {
  const [cmd, arg] = line.trim().split(" ");
  if (cmd === "mark") {
    marked = true;
    lat = [];
  } else if (cmd === "expect") {
    expect = Number(arg);
    if (total >= expect) report();
  } else if (cmd === "report") {
    report();
  }
});
