// `npm run check:lint`: ESLint's recommended rules over the client (src/,
// test/, scripts/) and the web UI (gateway/static/, the browser globals).
// Paths are from the repository's root: the script runs there, with --config.
import js from '@eslint/js';
import globals from 'globals';

export default [
  { ignores: ['gateway/static/vendor/**'] },
  {
    ...js.configs.recommended,
    files: ['clients/js/**/*.js', 'clients/js/**/*.mjs', 'gateway/static/*.js'],
    ignores: ['clients/js/node_modules/**'],
    languageOptions: { ecmaVersion: 2022, sourceType: 'module' },
  },
  {
    files: ['clients/js/src/**/*.js'],
    languageOptions: { globals: { ...globals['shared-node-browser'] } },
  },
  {
    files: ['clients/js/test/**/*.js', 'clients/js/scripts/**/*.mjs', 'clients/js/eslint.config.js'],
    languageOptions: { globals: { ...globals.node } },
  },
  {
    files: ['gateway/static/*.js'],
    languageOptions: { globals: { ...globals.browser } },
  },
];
