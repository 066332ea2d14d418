// The clients of `python -m bench` and `python -m bench.scale`, in Node so that the
// client is never the bottleneck (the bench reports this process's CPU too).
//
// Usage: node bench/watchers.mjs URL SIDS WATCHERS [--fast] [--replay] [--deflate]
//   SIDS: "sid" or "prefix:count" (prefix0 .. prefix{count-1}); WATCHERS per sid.
// Each connection says hello with live: true (at most 100 handshakes at a time).
// By default every frame is decoded and seqs are checked to follow each other.
// With --fast a frame is not decoded: the events it carries are read from the
// last "seq" key in its bytes (the seqs of a session are consecutive), so the
// cost per frame is a byte search, whatever the frame holds.
// With --deflate every connection offers permessage-deflate (ws's default offer).
// Prints JSON lines: {"ready": n} once every connection is welcomed, then reads
// commands on stdin:
//   "mark"      start counting latencies (events received from now on; not with --fast)
//   "expect N"  report once N events were received in all (since the start)
//   "report"    report now
// and exits when its stdin closes.
// and answers with {"report": {...}}: events, frames, bytes, gaps, latency
// p50/p99/max in ms (receipt time minus the event's ts), and when the last
// event arrived.
// With --replay (one sid, one watcher): the connection is closed once welcomed
// ({"gone": head}); "resume N" reconnects with the resume token of that welcome
// and answers {"replay_ms": ...} once the N events written meanwhile arrived.
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";
import path from "node:path";
import readline from "node:readline";

const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(path.join(here, "..", "clients", "js", "package.json"));
const WebSocket = require("ws");
const { decode, encode } = require("@msgpack/msgpack");

const argv = process.argv.slice(2);
const fast = argv.includes("--fast");
const replayMode = argv.includes("--replay");
const deflate = argv.includes("--deflate");
const [url, sidSpec, perSid] = argv.filter((a) => !a.startsWith("--"));
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
const SEQ_KEY = Buffer.from([0xa3, 0x73, 0x65, 0x71]); // msgpack "seq"
const OPTS = { perMessageDeflate: deflate, maxPayload: 64 * 1024 * 1024 };

let total = 0;
let frames = 0;
let bytes = 0;
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
  const r = { events: total, frames, bytes, gaps, measured: sorted.length, p50_ms: q(0.5), p99_ms: q(0.99), max_ms: q(1), last };
  say({ report: r });
  process.exit(0);
}

function onEvent(ev, conn) {
  if (conn.seq && ev.seq !== conn.seq + 1) gaps += 1;
  conn.seq = ev.seq;
  total += 1;
  if (marked) lat.push(now() - ev.ts);
  last = now();
}

// The value of the last "seq" key in a frame's bytes, or -1.
function lastSeq(buf) {
  const at = buf.lastIndexOf(SEQ_KEY);
  if (at < 0) return -1;
  const i = at + 4;
  const b = buf[i];
  if (b < 0x80) return b;
  if (b === 0xcc) return buf[i + 1];
  if (b === 0xcd) return buf.readUInt16BE(i + 1);
  if (b === 0xce) return buf.readUInt32BE(i + 1);
  if (b === 0xcf) return Number(buf.readBigUInt64BE(i + 1));
  return -1;
}

function onFrame(data, conn) {
  bytes += data.length;
  if (fast && conn.welcomed) {
    const seq = lastSeq(data);
    if (seq > conn.seq) {
      frames += 1;
      total += seq - conn.seq;
      conn.seq = seq;
      last = now();
    }
  } else {
    const f = decode(data);
    if (f.t === "ev") {
      frames += 1;
      onEvent(f, conn);
    } else if (f.t === "batch") {
      frames += 1;
      for (const ev of f.evs) onEvent(ev, conn);
    } else if (f.t === "welcome") {
      conn.welcomed = true;
      conn.seq = f.head;
      welcomed += 1;
      if (conn.onWelcome) conn.onWelcome(f);
    }
  }
  if (total >= expect) report();
}

// Open every connection, at most 100 handshakes in flight.
const pending = [];
for (const sid of sids) for (let w = 0; w < watchers; w++) pending.push(sid);
let inFlight = 0;
function openNext() {
  while (inFlight < 100 && pending.length) {
    const sid = pending.shift();
    inFlight += 1;
    const ws = new WebSocket(url, "wirepipe.v1", OPTS);
    ws.binaryType = "nodebuffer";
    const conn = { seq: 0, welcomed: false };
    conn.onWelcome = (f) => {
      inFlight -= 1;
      if (replayMode) {
        ws.close();
        ws.on("close", () => startReplay(sid, f));
        return;
      }
      if (welcomed === sids.length * watchers) say({ ready: welcomed });
      openNext();
    };
    ws.on("open", () => ws.send(encode({ t: "hello", sid, live: true })));
    ws.on("message", (data) => onFrame(data, conn));
    ws.on("error", (err) => say({ error: String(err) }));
  }
}
openNext();

let resumeWith = null;
function startReplay(sid, welcome) {
  resumeWith = { sid, welcome };
  say({ gone: welcome.head });
}

function resume(n) {
  const { sid, welcome } = resumeWith;
  const t0 = performance.now();
  const ws = new WebSocket(url, "wirepipe.v1", OPTS);
  ws.binaryType = "nodebuffer";
  const target = welcome.head + n;
  const conn = { seq: 0, welcomed: false };
  conn.onWelcome = (f) => {
    if (!f.recovered) say({ error: `not recovered: ${JSON.stringify(f)}` });
    conn.seq = welcome.head;
  };
  ws.on("open", () =>
    ws.send(encode({ t: "hello", sid, resume: welcome.resume, epoch: welcome.epoch, after: welcome.head })),
  );
  ws.on("message", (data) => {
    onFrame(data, conn);
    if (conn.seq >= target) {
      say({ replay_ms: performance.now() - t0, events: total, frames });
      process.exit(0);
    }
  });
  ws.on("error", (err) => say({ error: String(err) }));
}

const commands = readline.createInterface({ input: process.stdin });
commands.on("close", () => process.exit(0)); // the bench is done with these clients
commands.on("line", (line) => {
  const [cmd, arg] = line.trim().split(" ");
  if (cmd === "mark") {
    marked = true;
    lat = [];
  } else if (cmd === "expect") {
    expect = Number(arg);
    if (total >= expect) report();
  } else if (cmd === "report") {
    report();
  } else if (cmd === "resume") {
    resume(Number(arg));
  }
});
