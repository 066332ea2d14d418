// Types of src/index.js: everything is declared in wirepipe.d.ts.
export * from './wirepipe.js';
