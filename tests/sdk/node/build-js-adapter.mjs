// Builds a JavaScript stream adapter into a component with componentize-js (used by
// tests/wasm.rs): node build-js-adapter.mjs SOURCE.js WIT_DIR OUT.wasm
import { componentize } from '@bytecodealliance/componentize-js';
import { readFile, writeFile } from 'node:fs/promises';

const [source, witPath, out] = process.argv.slice(2);
const { component } = await componentize(await readFile(source, 'utf8'), {
  witPath,
  worldName: 'adapter',
  // No HTTP: the adapter world does not import wasi:http, and the host grants no network.
  disableFeatures: ['http', 'fetch-event'],
});
await writeFile(out, component);
console.log(`built ${out} (${component.length} bytes)`);
