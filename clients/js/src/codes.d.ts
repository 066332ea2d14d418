// Types of src/codes.js (declared in wirepipe.d.ts, which holds all the types).
export {
  CLOSE_FOR,
  CloseAction,
  CloseActionName,
  CloseCode,
  ErrorCode,
  ErrorCodeName,
  closeAction,
  isRetryableClose,
} from './wirepipe.js';
