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
