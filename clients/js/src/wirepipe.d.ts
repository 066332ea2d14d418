// Types of @wirepipe/client (src/index.js, src/wirepipe.js, src/codes.js, src/state.js, src/core.js).
// Hand-written: keep in step with the JavaScript and with docs/protocol.md.

// ---- codes.js ----

export declare const CloseCode: Readonly<{
  NORMAL: 1000;
  GOING_AWAY: 1001;
  ABNORMAL: 1006;
  MESSAGE_TOO_BIG: 1009;
  INTERNAL_ERROR: 1011;
  SERVICE_RESTART: 1012;
  TRY_AGAIN_LATER: 1013;
  BAD_FRAME: 4400;
  UNAUTHORIZED: 4401;
  NOT_FOUND: 4404;
  HANDSHAKE_TIMEOUT: 4408;
  CONFLICT: 4409;
  RATE_LIMITED: 4429;
}>;

export type ErrorCodeName =
  | 'bad_frame' | 'too_big' | 'no_hello' | 'unauthorized' | 'bad_token' | 'no_session'
  | 'rate_limited' | 'forbidden' | 'no_app' | 'sid_taken' | 'unknown_ask' | 'ask_closed'
  | 'bad_value' | 'lagged' | 'shutdown' | 'internal' | 'ended' | 'not_here' | 'unavailable' | 'inbox_full' | 'refused';

export declare const ErrorCode: Readonly<{
  BAD_FRAME: 'bad_frame';
  TOO_BIG: 'too_big';
  NO_HELLO: 'no_hello';
  UNAUTHORIZED: 'unauthorized';
  BAD_TOKEN: 'bad_token';
  NO_SESSION: 'no_session';
  RATE_LIMITED: 'rate_limited';
  FORBIDDEN: 'forbidden';
  NO_APP: 'no_app';
  SID_TAKEN: 'sid_taken';
  UNKNOWN_ASK: 'unknown_ask';
  ASK_CLOSED: 'ask_closed';
  BAD_VALUE: 'bad_value';
  LAGGED: 'lagged';
  SHUTDOWN: 'shutdown';
  INTERNAL: 'internal';
  ENDED: 'ended';
  NOT_HERE: 'not_here';
  UNAVAILABLE: 'unavailable';
  INBOX_FULL: 'inbox_full';
  REFUSED: 'refused';
}>;

/** The close code that follows a fatal error of each code (null: never fatal). */
export declare const CLOSE_FOR: Readonly<Record<ErrorCodeName, number | null>>;

export type CloseActionName = 'retry' | 'stop' | 'reauth';
export declare const CloseAction: Readonly<{ RETRY: 'retry'; STOP: 'stop'; REAUTH: 'reauth' }>;

/** 'retry' (1001, 1006, 1011, 1012, 1013, 4408, 4429), 'reauth' (4401) or 'stop' (anything else). */
export declare function closeAction(code: number): CloseActionName;
export declare function isRetryableClose(code: number): boolean;

// ---- wirepipe.js ----

export declare const PROTOCOL: 'wirepipe.v1';
export declare const DEFAULT_CLIENT: string;

export type StateName = 'connecting' | 'open' | 'recovering' | 'closed';
export declare const State: Readonly<{
  CONNECTING: 'connecting';
  OPEN: 'open';
  RECOVERING: 'recovering';
  CLOSED: 'closed';
}>;

/** One event of the session log (docs/protocol.md section 5). Unknown kinds pass through. */
export interface WirepipeEvent<D = any> {
  seq: number;
  /** Event kind: 'text', 'message', 'plan', 'task', 'code', 'output', 'tool', 'log', 'ask', 'answer', 'status', or a newer one. */
  k: string;
  /** Float seconds since the Unix epoch. */
  ts: number;
  d: D;
}

export interface PlanTask {
  id: string;
  instruction: string;
  deps: string[];
  type: string;
  status: 'pending' | 'running' | 'done' | 'failed' | 'skipped';
}

/** A welcome's `snapshot` map (docs/protocol.md section 4); `Snapshot.fromMap` folds it. */
export interface SnapshotMap {
  status?: { state: string; detail?: string } | null;
  plan?: { goal: string; tasks: PlanTask[]; current: string | null } | null;
  asks?: Array<{ id: string; prompt: string; choices?: unknown[]; default?: unknown; timeout?: number }>;
  texts?: Array<{ id: string; text: string }>;
  [key: string]: unknown;
}

export interface Welcome {
  t: 'welcome';
  sid: string;
  epoch: string;
  resume: string;
  head: number;
  first: number;
  recovered: boolean;
  grant: 'viewer' | 'operator';
  snapshot: SnapshotMap | null;
  window: number | null;
  /** ms */
  heartbeat: number;
  [key: string]: unknown;
}

export interface ResetInfo {
  snapshot: SnapshotMap | null;
  welcome: Welcome;
}

export interface ErrorInfo {
  /** A section 7 code; 'bad_frame' for an undecodable server frame, 'connect_failed' for a local failure to connect. */
  code: ErrorCodeName | 'connect_failed' | string;
  msg: string;
  fatal: boolean;
}

export interface CloseInfo {
  code: number;
  reason: string;
  willRetry: boolean;
  /** ms until the reconnect, when willRetry. */
  delay?: number;
}

export interface Replied {
  rid: string;
  ok: boolean;
  /** Error code when not ok: 'forbidden', 'unknown_ask', 'ask_closed', 'bad_value', 'ended', ... */
  err?: string;
}

export interface WebSocketLike {
  readonly readyState: number;
  binaryType: string;
  send(data: Uint8Array): void;
  close(code?: number, reason?: string): void;
  /** Called instead of close() when present (the `ws` package's), to drop a dead connection without a closing handshake. */
  terminate?(): void;
  addEventListener(type: string, listener: (ev: any) => void): void;
}

export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike;

export interface ConnectOptions {
  /** Session id: 1-128 chars of [A-Za-z0-9._:-]. Required. */
  sid: string;
  /** Credential sent in every hello (change it with setAuth). */
  auth?: string;
  /** Flow-control window: the server keeps at most this many events un-acked. */
  window?: number;
  /** Start a run of a registered app under this sid. Sent on the first hello only, never on a reconnect. */
  start?: { app: string; input?: unknown };
  /** Skip history: start at the head. Sent until the first welcome; a reconnect resumes from the last event seen. */
  live?: boolean;
  /** hello.client; default 'wirepipe-js/<version>'. */
  client?: string;
  /** WebSocket constructor; default globalThis.WebSocket, else the `ws` package. */
  WebSocket?: WebSocketConstructor;
  /** Reconnect backoff in ms: delay = random() * min(max, base * 2**attempt). Default {base: 250, max: 10000}. */
  backoff?: { base?: number; max?: number };
  /** Returns a float in [0, 1); default Math.random. For tests. */
  random?: () => number;
  /** Reconnects in a row without a welcome before giving up; default Infinity. */
  maxRetries?: number;
}

export interface ClientEvents {
  /** Each event, in seq order, duplicates dropped. */
  event: WirepipeEvent;
  welcome: Welcome;
  /** The first welcome, and every welcome with recovered: false, a new epoch, or after `lagged`: drop what you showed and rebuild. */
  reset: ResetInfo;
  state: StateName;
  /** error frames from the server, and local problems. */
  error: ErrorInfo;
  close: CloseInfo;
}

export declare class ClientClosedError extends Error {}

export declare class Client implements AsyncIterable<WirepipeEvent> {
  constructor(url: string, opts: ConnectOptions);
  readonly url: string;
  readonly state: StateName;
  readonly sid: string;
  readonly epoch: string | null;
  /** Last seq delivered in the current epoch; after a reset, welcome.first - 1 (welcome.head with `live`). */
  readonly lastSeq: number;
  readonly grant: 'viewer' | 'operator' | null;
  /** Snapshot of the latest welcome that carried one. */
  readonly snapshot: SnapshotMap | null;
  readonly welcome: Welcome | null;
  readonly lastClose: CloseInfo | null;
  /** Events received twice (dropped), holes in the seqs, sockets opened. */
  readonly stats: { duplicates: number; gaps: number; connects: number };

  /** Returns a function that removes the listener. Throws TypeError on an unknown name. */
  on<K extends keyof ClientEvents>(name: K, fn: (arg: ClientEvents[K]) => void): () => void;
  off<K extends keyof ClientEvents>(name: K, fn: (arg: ClientEvents[K]) => void): void;

  /** Answer an ask. Rejects with ClientClosedError only if the client is closed for good first. */
  reply(askId: string, value: unknown): Promise<Replied>;
  /** Message to the agent (Pipe.get_message). */
  send(data: unknown): Promise<Replied>;
  /** Ask the agent run to stop. */
  cancel(reason?: string): Promise<Replied>;
  /** Round trip of a ping frame, in ms. */
  ping(): Promise<number>;
  /** New credential for the next hello; after a 4401 close, reconnects. */
  setAuth(auth: string | undefined): void;
  /** Close with 1000 and stop reconnecting. Resolves when the socket is closed. */
  close(reason?: string): Promise<void>;
  /**
   * Events delivered after this call; ends when the client is closed for good.
   * The iterator is iterable itself, and always has return() (what `break` calls: it stops and drops its buffer).
   */
  [Symbol.asyncIterator](): AsyncIterableIterator<WirepipeEvent> & {
    return(): Promise<IteratorResult<WirepipeEvent>>;
  };
}

export declare function connect(url: string, opts: ConnectOptions): Client;

/** random() * min(max, base * 2**attempt); attempt 0 is the first retry. */
export declare function backoffDelay(
  attempt: number,
  backoff?: { base?: number; max?: number },
  random?: () => number,
): number;

// ---- state.js ----

/** Session ids: 1-128 chars of [A-Za-z0-9._:-]. */
export declare const SID_RE: RegExp;
/** Run states after which no event follows: done, failed, cancelled. */
export declare const FINAL_STATES: ReadonlySet<string>;
/** Every run state a `status` event may carry. */
export declare const RUN_STATES: ReadonlySet<string>;
/** True for the `status` event that ends a run. */
export declare function isFinal(k: string, d: unknown): boolean;
/** A decoded MessagePack map (a plain object; not an array, not bytes). */
export declare function isMap(value: unknown): value is Record<string, any>;

/** The session snapshot reducer (protocol/state.py `Snapshot`). */
export declare class Snapshot {
  status: Record<string, any> | null;
  plan: Record<string, any> | null;
  /** Open asks by id, in the order they were asked. */
  asks: Map<string, Record<string, any>>;
  /** Open text streams by id: their deltas. */
  texts: Map<string, string[]>;
  /** Fold one event in; malformed payloads are ignored. */
  apply(k: string, d: unknown): void;
  static fromMap(m: unknown): Snapshot;
  asMap(): SnapshotMap;
  /** The text of the open stream `id`, or undefined. */
  text(id: string): string | undefined;
  readonly finished: boolean;
}

// ---- core.js ----

export interface CoreOptions {
  sid: string;
  auth?: string;
  window?: number;
  start?: { app: string; input?: unknown };
  live?: boolean;
  client?: string;
}

export type CoreOutput =
  | { type: 'welcome'; welcome: Welcome; reset: boolean; first: boolean }
  | { type: 'event'; ev: WirepipeEvent }
  | { type: 'replied'; frame: Record<string, any> }
  | { type: 'pong'; frame: Record<string, any> }
  | { type: 'error'; frame: Record<string, any> };

/** The client's protocol rules without I/O (protocol/client.py `ClientProtocol`). */
export declare class ClientCore {
  constructor(opts: CoreOptions);
  sid: string;
  auth: string | undefined;
  window: number | undefined;
  start: { app: string; input?: unknown } | undefined;
  live: boolean;
  client: string | undefined;
  welcome: Welcome | null;
  resets: Welcome[];
  errors: Record<string, any>[];
  epoch: string | null;
  resume: string | null;
  lastSeq: number;
  duplicates: number;
  gaps: number;
  connects: number;
  welcomed: boolean;
  generation: number;
  pending: Map<string, Record<string, any>>;
  /** The frames queued for the current socket (then forgotten). */
  framesToSend(): Record<string, any>[];
  /** A new socket is open: queues and returns its hello. */
  opened(): Record<string, any>;
  /** The socket is gone: what to do next. */
  closed(code: number): CloseActionName;
  /** One decoded server frame in; what it means out, in order. */
  receive(frame: Record<string, any>): CoreOutput[];
  /** The application took event `seq` of `generation`: the ack the rule asks for, or null. */
  consumed(seq: number, generation: number): { t: 'ack'; seq: number } | null;
  request(frame: Record<string, any>): void;
  ping(n: unknown): { t: 'ping'; n: unknown };
}
