// Close codes and error codes of the wirepipe protocol (docs/protocol.md section 7)
// and what each close code means for a reconnect.
// mirrored from protocol/errors.py; keep both in step.

/** WebSocket close codes the gateway uses, and the standard ones a client sees. */
export const CloseCode = Object.freeze({
  NORMAL: 1000,
  GOING_AWAY: 1001, // `shutdown`: the gateway is going away
  ABNORMAL: 1006, // no close frame: the connection dropped (never sent on the wire)
  MESSAGE_TOO_BIG: 1009, // `too_big`
  INTERNAL_ERROR: 1011, // `internal`
  SERVICE_RESTART: 1012,
  TRY_AGAIN_LATER: 1013, // `unavailable`
  BAD_FRAME: 4400, // `bad_frame`
  UNAUTHORIZED: 4401, // `unauthorized`, `bad_token`
  NOT_FOUND: 4404, // `no_session`, `no_app`
  HANDSHAKE_TIMEOUT: 4408, // `no_hello`
  CONFLICT: 4409, // `sid_taken`
  RATE_LIMITED: 4429, // `rate_limited`
});

/** The `code` of an `error` frame (and the `err` of a `replied` frame). */
export const ErrorCode = Object.freeze({
  BAD_FRAME: 'bad_frame',
  TOO_BIG: 'too_big',
  NO_HELLO: 'no_hello',
  UNAUTHORIZED: 'unauthorized',
  BAD_TOKEN: 'bad_token',
  NO_SESSION: 'no_session',
  RATE_LIMITED: 'rate_limited',
  FORBIDDEN: 'forbidden',
  NO_APP: 'no_app',
  SID_TAKEN: 'sid_taken',
  UNKNOWN_ASK: 'unknown_ask',
  ASK_CLOSED: 'ask_closed',
  BAD_VALUE: 'bad_value',
  LAGGED: 'lagged',
  SHUTDOWN: 'shutdown',
  INTERNAL: 'internal',
  // Additive (docs/protocol.md): a `send` or `cancel` for a session whose run has already ended.
  ENDED: 'ended',
  // Additive: a reply/send/cancel reached a node that does not run the session's agent.
  NOT_HERE: 'not_here',
  // Additive: the session store cannot be reached right now; reconnect with backoff.
  UNAVAILABLE: 'unavailable',
  // Additive: the agent's inbox is full; re-send the `send` later (same rid).
  INBOX_FULL: 'inbox_full',
  // Additive: a middleware of the gateway refused the request (or failed on it).
  REFUSED: 'refused',
});

/** The close code that follows a fatal error of each code (null: never fatal). */
export const CLOSE_FOR = Object.freeze({
  bad_frame: CloseCode.BAD_FRAME,
  too_big: CloseCode.MESSAGE_TOO_BIG,
  no_hello: CloseCode.HANDSHAKE_TIMEOUT,
  unauthorized: CloseCode.UNAUTHORIZED,
  bad_token: CloseCode.UNAUTHORIZED,
  no_session: CloseCode.NOT_FOUND,
  rate_limited: CloseCode.RATE_LIMITED,
  forbidden: null,
  no_app: CloseCode.NOT_FOUND,
  sid_taken: CloseCode.CONFLICT,
  unknown_ask: null,
  ask_closed: null,
  bad_value: null,
  lagged: null,
  shutdown: CloseCode.GOING_AWAY,
  internal: CloseCode.INTERNAL_ERROR,
  ended: null,
  not_here: null,
  unavailable: CloseCode.TRY_AGAIN_LATER,
  inbox_full: null,
  refused: null,
});

/** What a client does after a close: reconnect with backoff, stop, or wait for new credentials. */
export const CloseAction = Object.freeze({ RETRY: 'retry', STOP: 'stop', REAUTH: 'reauth' });

/** @type {Set<number>} */
const RETRY = new Set([
  CloseCode.GOING_AWAY,
  CloseCode.ABNORMAL,
  CloseCode.INTERNAL_ERROR,
  CloseCode.SERVICE_RESTART,
  CloseCode.TRY_AGAIN_LATER,
  CloseCode.HANDSHAKE_TIMEOUT,
  CloseCode.RATE_LIMITED,
]);

/**
 * What to do after the connection closed with `code`.
 *
 * 'retry' for 1001, 1006, 1011, 1012, 1013, 4408, 4429; 'reauth' for 4401
 * (stop until new credentials are given); 'stop' for everything else,
 * including 4400, 4404, 4409, 1009 and 1000. Codes the protocol does not name
 * stop too: retrying on a close we do not understand could loop for ever.
 *
 * @param {number} code
 * @returns {'retry' | 'stop' | 'reauth'}
 */
export function closeAction(code) {
  if (RETRY.has(code)) return CloseAction.RETRY;
  if (code === CloseCode.UNAUTHORIZED) return CloseAction.REAUTH;
  return CloseAction.STOP;
}

/**
 * @param {number} code
 * @returns {boolean} true if a client reconnects (with backoff) after this close code.
 */
export function isRetryableClose(code) {
  return RETRY.has(code);
}
