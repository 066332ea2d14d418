// Types of src/state.js (declared in wirepipe.d.ts, which holds all the types).
export { FINAL_STATES, RUN_STATES, SID_RE, Snapshot, isFinal, isMap } from './wirepipe.js';
