// @wirepipe/client: everything public, from one place.
export {
  Client,
  ClientClosedError,
  DEFAULT_CLIENT,
  PROTOCOL,
  State,
  backoffDelay,
  connect,
} from './wirepipe.js';
export {
  CloseAction,
  CloseCode,
  CLOSE_FOR,
  ErrorCode,
  closeAction,
  isRetryableClose,
} from './codes.js';
export { ClientCore } from './core.js';
export { FINAL_STATES, RUN_STATES, SID_RE, Snapshot, isFinal, isMap } from './state.js';
