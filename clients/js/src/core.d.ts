// Types of src/core.js (declared in wirepipe.d.ts, which holds all the types).
export { ClientCore, CoreOptions, CoreOutput } from './wirepipe.js';
